"""The upstream client: HTTP/1.1 over pooled keep-alive connections, parsed with httptools.

It does what the proxy needs and nothing else, which is what makes it cheap: one write per
request (head and body together), the response parsed by llhttp (httptools, as uvicorn parses
requests), body chunks handed to the relay as they arrive, chunked encoding decoded, content
encodings left alone (bodies pass byte for byte), interim 1xx answers skipped. No redirects,
cookies or proxies. With aiohttp's client the proxy used ~230 µs of CPU per call; with this one
~145 µs (benchmarks/README.md). `LLM_PROXY_UPSTREAM_CLIENT=aiohttp` keeps the old client selectable.

Connections: at most `max_connections_per_host` calls in flight (more wait for a slot); idle
connections are reused last-in first-out and closed after `idle_connection` seconds. A request
on a reused connection that the server had already closed (no byte of answer came back) is
sent once more on a new connection: the usual keep-alive race, where the server never saw the
request. A connection is reused only after its answer was read to the end and the server
allowed keep-alive; one left mid-answer (client gone, error, timeout) is closed.

Timeouts (per provider): `connect`; `response_header` for the status line and headers (the
caller's); `request`, the longest silence between two body reads.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

from llm_proxy.proxy.providers import Provider
from llm_proxy.proxy.upstream import UpstreamResponse, UpstreamTimeoutError, UpstreamUnreachableError

HIGH_WATER = 256 * 1024
"""Body bytes buffered from the upstream before reading from it pauses."""
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class _Broken(Exception):
    """The connection failed; `answered` tells whether any byte of an answer had come back."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class _Connection(asyncio.Protocol):
    """One upstream connection and the answer it is receiving; parser callbacks fill it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.answered = False
        self.error: str | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"invalid HTTP answer: {exc}")
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and exc is None and self._ends_at_close():
            self.complete, self.keep_alive = True, False
        if not self.complete:
            self._fail(f"connection closed by the upstream{f' ({exc!r})' if exc else ''}")
        self._wake()

    def _ends_at_close(self) -> bool:
        """An answer whose body has neither a length nor chunks: the close is its end (RFC 9112 6.3)."""
        if not self.headers_done or self.status in (204, 304):
            return False
        return not any(name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower())
                       for name, value in self.headers)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the final one follows
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True
            self._wake()

    def start(self, request: bytes) -> None:
        """Send a request on a fresh or idle connection and reset the answer's state."""
        assert self.transport is not None
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.headers, self.chunks, self.buffered = 0, [], [], 0
        self.headers_done = self.complete = self.answered = False
        self.error = None
        self.transport.write(request)

    async def wait(self) -> None:
        """Until the parser or the connection has news (headers, a body chunk, the end, an error)."""
        if self.error is not None:
            raise _Broken(self.error, self.answered)
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise _Broken(self.error, self.answered)

    def take(self) -> list[bytes]:
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunks

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Response:
    __slots__ = ("_conn", "_done", "_upstream", "headers", "status")

    def __init__(self, conn: _Connection, upstream: Http1Upstream) -> None:
        self._conn = conn
        self._upstream = upstream
        self._done = False
        self.status = conn.status
        self.headers = conn.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        idle = self._upstream.read_timeout
        try:
            while True:
                if conn.chunks:
                    for chunk in conn.take():
                        yield chunk
                    continue
                if conn.complete:
                    self._done = True
                    return
                async with asyncio.timeout(idle):
                    await conn.wait()
        except _Broken as exc:
            raise UpstreamUnreachableError(f"upstream stream broke: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamUnreachableError(f"upstream sent nothing for {idle:g}s") from exc

    def release(self) -> None:
        conn = self._conn
        if self._done and conn.complete and conn.keep_alive and not conn.closed:
            self._upstream.put_back(conn)
        else:
            conn.close()
            self._upstream.free_slot()


class Http1Upstream:
    """An `Upstream` for one provider in one worker (see module doc)."""

    def __init__(self, provider: Provider) -> None:
        parts = urlsplit(provider.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream URL {provider.base_url!r}")
        self.provider = provider
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self._port == (443 if parts.scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if default_port else f"{host}:{self._port}"
        self._prefix = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        timeouts = provider.timeouts
        self._header_timeout = timeouts.response_header
        self._connect_timeout = timeouts.connect
        self._keep_idle = timeouts.idle_connection
        self.read_timeout = timeouts.request
        self._slots = asyncio.Semaphore(min(provider.max_connections, provider.max_connections_per_host))
        self._idle: list[_Connection] = []
        self._closing = False

    async def send(self, method: str, path_qs: str, headers: list[tuple[str, str]],
                   body: bytes) -> UpstreamResponse:
        request = self._request(method, path_qs, headers, body)
        await self._slots.acquire()
        try:
            response = await self._exchange(request, method == "HEAD")
        except BaseException:
            self._slots.release()
            raise
        return response

    async def _exchange(self, request: bytes, head: bool) -> _Response:
        for attempt in (1, 2):
            conn, reused = await self._connection()
            try:
                async with asyncio.timeout(self._header_timeout):
                    conn.start(request)
                    while not conn.headers_done:
                        await conn.wait()
            except _Broken as exc:
                conn.close()
                if reused and not exc.answered and attempt == 1:
                    continue
                raise UpstreamUnreachableError(str(exc)) from None
            except TimeoutError:
                conn.close()
                raise UpstreamTimeoutError(
                    f"no response headers from {self.provider.name} within {self._header_timeout:g}s") from None
            except BaseException:
                conn.close()
                raise
            if head:  # the answer to HEAD has no body, whatever its Content-Length says
                conn.complete, conn.keep_alive = True, False
            return _Response(conn, self)
        raise AssertionError("unreachable")

    async def _connection(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self._keep_idle:
                return conn, True
            conn.close()
        conn = _Connection()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn, self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None)
        except TimeoutError:
            conn.close()
            raise UpstreamUnreachableError(
                f"could not connect to {self._host}:{self._port} within {self._connect_timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnreachableError(f"{type(exc).__name__}: {exc}") from exc
        return conn, False

    def _request(self, method: str, path_qs: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        lines = [f"{method} {self._prefix}{path_qs} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method in _METHODS_WITH_BODY:
            lines.append(f"Content-Length: {len(body)}")
        head = "\r\n".join(lines)
        breaks = len(lines) - 1
        if head.count("\n") != breaks or head.count("\r") != breaks:  # a line break would smuggle a header in
            raise UpstreamUnreachableError("a request header holds a line break")
        try:
            return (head + "\r\n\r\n").encode("latin-1") + body
        except UnicodeEncodeError:
            raise UpstreamUnreachableError("a request header holds a character outside Latin-1") from None

    def put_back(self, conn: _Connection) -> None:
        self._slots.release()
        if self._closing or len(self._idle) >= self.provider.max_connections_per_host:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def free_slot(self) -> None:
        self._slots.release()

    async def aclose(self) -> None:
        self._closing = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        await asyncio.sleep(0)
