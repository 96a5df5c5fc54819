"""The mock's HTTP/1.1 server: a bare `asyncio.Protocol` driving the `httptools` parser.

It has to outrun any framework-based server by a wide margin, because benchmarks proxy to it:
a non-streamed reply with no latency is written straight from the parser callback, with no
task, no framework objects and one `transport.write`. Only delayed replies and streams get
a task; while one runs, requests that arrive on the same connection wait in a queue, so
answers keep their order. Keep-alive follows the request (HTTP/1.1 default, `Connection`).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httptools

from llm_proxy.errors import openai_error_body
from llm_proxy.mock_upstream.hooks import HOOK_HEADERS, MockOptions
from llm_proxy.mock_upstream.memo import ReplyMemo
from llm_proxy.mock_upstream.routes import Reply, Request, error_reply

log = logging.getLogger(__name__)

STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def build_head(
    reply: Reply,
    extra: list[tuple[str, str]],
    keep_alive: bool,
    length: int | None,
    chunked: bool = False,
) -> bytes:
    """Status line and headers; `length=None` is a stream: chunked, or (HTTP/1.0) ended by close."""
    status = STATUS_LINES.get(reply.status) or f"HTTP/1.1 {reply.status} Status\r\n".encode()
    head = f"content-type: {reply.content_type}\r\n"
    if length is not None:
        head += f"content-length: {length}\r\n"
    elif chunked:
        head += "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
    else:
        head += "cache-control: no-cache\r\n"
    if not keep_alive:
        head += "connection: close\r\n"
    for name, value in extra:
        head += f"{name}: {value}\r\n"
    return status + (head + "\r\n").encode()


@dataclass(slots=True)
class ServerState:
    """Shared by the connections of one server."""

    options: MockOptions
    memo: ReplyMemo
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    connections: set[MockProtocol] = field(default_factory=set)


class MockProtocol(asyncio.Protocol):
    """One client connection; the `on_*` methods are httptools parser callbacks."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.queue: deque[tuple[Request, bool, bool]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.writable: asyncio.Event | None = None

    # -- connection events --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.state.connections.discard(self)
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()
        if self.writable is not None:
            self.writable.set()

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = asyncio.Event()
        self.writable.clear()

    def resume_writing(self) -> None:
        if self.writable is not None:
            self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request was answered over HTTP/1.1 (the upgrade is declined by ignoring it).
            pass
        except httptools.HttpParserError as exc:
            self._reject(str(exc).encode())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _reject(self, why: bytes) -> None:
        if self.transport is None:
            return
        if self.task is None:
            message = "Malformed HTTP request: " + why.decode("utf-8", "replace")
            body = openai_error_body(message, "invalid_request_error", None)
            reply = Reply(400, body)
            self.transport.write(build_head(reply, [], False, len(body)) + body)
        self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.raw_headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers = {
            name.decode("latin-1").lower(): value.decode("utf-8", "replace")
            for name, value in self.raw_headers
        }
        expect = self.headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and self.transport is not None:
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        headers = self.headers
        request = Request(
            self.parser.get_method().decode("ascii"),
            self.url.decode("latin-1"),
            headers,
            self.raw_headers,
            b"".join(self.body),
            not HOOK_HEADERS.isdisjoint(headers),
        )
        http11 = self.parser.get_http_version() == "1.1"
        keep_alive = bool(self.parser.should_keep_alive())
        if self.task is not None:
            self.queue.append((request, keep_alive, http11))
        else:
            self._dispatch(request, keep_alive, http11)

    # -- answering ----------------------------------------------------------------------
    def _dispatch(self, request: Request, keep_alive: bool, http11: bool) -> None:
        seq = next(self.state.seq)
        try:
            reply = self.state.memo.reply(request, seq, int(time.time()))
        except Exception:
            log.exception("mock upstream: handler failed for %s %s", request.method, request.target)
            reply = error_reply(500, "The mock upstream failed on this request.", "server_error")
        request_id = request.headers.get("x-request-id") or f"req_mock{seq:010d}"
        reply.headers.append(("x-request-id", request_id))
        if reply.frames is None and not reply.latency and reply.drop_after is None:
            self._write_full(reply, keep_alive)
            return
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._respond_later(reply, keep_alive, http11))

    async def _respond_later(self, reply: Reply, keep_alive: bool, http11: bool) -> None:
        try:
            if reply.latency:
                await asyncio.sleep(reply.latency)
            if self.transport is None:
                return
            if reply.frames is not None:
                await self._write_stream(reply, reply.frames, keep_alive and http11, http11)
            elif reply.drop_after is not None:
                self.transport.close()
            else:
                self._write_full(reply, keep_alive)
        finally:
            self.task = None
        self._drain_queue()

    def _drain_queue(self) -> None:
        while self.queue and self.transport is not None:
            self._dispatch(*self.queue.popleft())
            if self.task is not None:
                return

    def _write_full(self, reply: Reply, keep_alive: bool) -> None:
        if self.transport is None:
            return
        body, extra = reply.body, reply.headers
        if reply.gzip:
            body = gzip.compress(body, compresslevel=5)
            extra = [*extra, ("content-encoding", "gzip")]
        self.transport.write(build_head(reply, extra, keep_alive, len(body)) + body)
        if not keep_alive:
            self.transport.close()

    async def _write_stream(
        self, reply: Reply, frames: list[bytes], keep_alive: bool, chunked: bool
    ) -> None:
        """Frames paced by `chunk_delay`, cut after `drop_after` frames when asked."""
        encode = _GzipFrames() if reply.gzip else None
        extra = [*reply.headers, ("content-encoding", "gzip")] if encode else reply.headers
        self._send(build_head(reply, extra, keep_alive, None, chunked))
        for index, frame in enumerate(frames):
            if reply.drop_after is not None and index >= reply.drop_after:
                self.close()
                return
            if index and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            if self.writable is not None and not self.writable.is_set():
                await self.writable.wait()
            if self.transport is None:
                return
            self._send(_chunk(encode(frame) if encode else frame, chunked))
        tail = _chunk(encode.finish(), chunked) if encode else b""
        self._send(tail + (LAST_CHUNK if chunked else b""))
        if not keep_alive:
            self.close()

    def _send(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.transport.write(data)


def _chunk(data: bytes, chunked: bool) -> bytes:
    if not chunked or not data:
        return data
    return b"%x\r\n%b\r\n" % (len(data), data)


class _GzipFrames:
    """Gzip a stream frame by frame; each frame is flushed so clients can decode it at once."""

    def __init__(self) -> None:
        self._zip = zlib.compressobj(5, zlib.DEFLATED, 31)

    def __call__(self, frame: bytes) -> bytes:
        return self._zip.compress(frame) + self._zip.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._zip.flush()


class MockServer:
    """A running mock on a loopback port; `close()` stops it and drops open connections."""

    def __init__(self, server: asyncio.Server, state: ServerState, host: str) -> None:
        self._server = server
        self._state = state
        self.host = host
        self.port: int = server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client (`.../v1`)."""
        return self.url + "/v1"

    async def close(self) -> None:
        self._server.close()
        for connection in list(self._state.connections):
            connection.close()
        await self._server.wait_closed()

    async def __aenter__(self) -> MockServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_mock(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    latency_ms: float = 0.0,
    chunk_delay_ms: float = 0.0,
    chunks: int = 8,
    api_key: str | None = None,
) -> MockServer:
    """Start serving on the running loop; port 0 picks a free port (see `.port`)."""
    if chunks < 1 or latency_ms < 0 or chunk_delay_ms < 0:
        raise ValueError("chunks must be >= 1 and delays >= 0")
    options = MockOptions(latency_ms, chunk_delay_ms, chunks, api_key)
    state = ServerState(options, ReplyMemo(options))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MockProtocol(state), host, port, backlog=1024)
    return MockServer(server, state, host)


async def serve(
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[MockServer], Any] | None = None,
    **options: Any,
) -> None:
    """Serve until `stop` is set (or the task is cancelled); `options` as for `start_mock`."""
    server = await start_mock(host, port, **options)
    try:
        if on_ready is not None:
            on_ready(server)
        await (stop or asyncio.Event()).wait()
    finally:
        await server.close()
