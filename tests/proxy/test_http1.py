"""Http1Upstream against a raw asyncio server that writes scripted bytes, so each case controls the wire."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.services import free_port

from llm_proxy.proxy.http1 import Http1Upstream
from llm_proxy.proxy.providers import Provider, Timeouts
from llm_proxy.proxy.upstream import UpstreamResponse, UpstreamTimeoutError, UpstreamUnreachableError

TIMEOUTS = Timeouts(request=5, response_header=5, idle_connection=30, connect=2)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Request:
    connection: int
    """Which accepted connection it came on, in accept order."""
    seq: int
    """Its place among that connection's requests."""
    head: str
    body: bytes

    @property
    def line(self) -> str:
        return self.head.split("\r\n", 1)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        pairs = [line.split(": ", 1) for line in self.head.split("\r\n")[1:]]
        return [(name, value) for name, value in pairs]


Respond = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]
"""Writes the answer to one request; returning False closes the connection afterwards."""


async def read_request(reader: asyncio.StreamReader, connection: int, seq: int) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return Request(connection, seq, head[:-4].decode("latin-1"), body)


@dataclass
class ScriptedServer:
    respond: Respond
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    ended: list[asyncio.Event] = field(default_factory=list)
    """One per accepted connection, set when it is closed (by either side)."""
    open_now: int = 0
    max_open: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def connections(self) -> int:
        return len(self.ended)

    async def start(self, tls: ssl.SSLContext | None) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # a task of our own, so close() can cancel it without Python 3.11's streams logging the cancellation
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        await asyncio.wait([task])
        self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.ended)
        self.ended.append(asyncio.Event())
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            seq = 0
            while (request := await read_request(reader, index, seq)) is not None:
                self.requests.append(request)
                seq += 1
                if not await self.respond(request, writer):
                    break
        except ConnectionError:
            pass
        finally:
            self.open_now -= 1
            self.ended[index].set()
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()


def answer(raw: bytes, *, keep: bool = True) -> Respond:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep
    return respond


class Wire:
    def __init__(self) -> None:
        self.servers: list[ScriptedServer] = []
        self.clients: list[Http1Upstream] = []

    async def serve(self, respond: Respond, tls: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(respond)
        await server.start(tls)
        self.servers.append(server)
        return server

    def client(self, base_url: str, *, timeouts: Timeouts = TIMEOUTS, per_host: int = 4) -> Http1Upstream:
        provider = Provider(
            name="scripted", base_url=base_url, allowed_endpoints=("/v1",),
            allowed_methods=frozenset({"GET", "POST", "HEAD"}), timeouts=timeouts,
            max_connections=per_host, max_connections_per_host=per_host)
        client = Http1Upstream(provider)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
        for server in self.servers:
            await server.close()


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    wire = Wire()
    yield wire
    await wire.close()


def base(server: ScriptedServer, scheme: str = "http", host: str = "127.0.0.1") -> str:
    return f"{scheme}://{host}:{server.port}/v1"


async def read_all(response: UpstreamResponse) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.chunks()])
    finally:
        response.release()


async def collect(response: UpstreamResponse, into: list[bytes],
                  after_each: Callable[[], Awaitable[None]] | None = None) -> None:
    """Read the body into `into` (so what came before an error can be checked too), awaiting `after_each`
    after every chunk; the response is released at the end."""
    try:
        async for chunk in response.chunks():
            into.append(chunk)
            if after_each is not None:
                await after_each()
    finally:
        response.release()


async def get(client: Http1Upstream, path: str = "/models") -> bytes:
    return await read_all(await client.send("GET", path, [], b""))


class TestRequestOnTheWire:
    async def test_method_path_host_headers_and_body(self, wire: Wire) -> None:
        server = await wire.serve(answer(OK))
        client = wire.client(base(server) + "/")
        body = b'{"model":"m"}' + bytes(range(256))
        given = [("Content-Type", "application/json"), ("X-Dup", "1"), ("X-Dup", "2 two")]
        await read_all(await client.send("POST", "/chat/completions?x=1", given, body))
        await read_all(await client.send("POST", "/files", [], b""))
        await read_all(await client.send("GET", "/models?limit=2", [("Accept", "*/*")], b""))

        post, empty_post, get_ = server.requests
        host = ("Host", f"127.0.0.1:{server.port}")
        assert post.line == "POST /v1/chat/completions?x=1 HTTP/1.1"
        assert sorted(post.headers) == sorted([host, *given, ("Content-Length", str(len(body)))])
        assert post.body == body
        assert empty_post.line == "POST /v1/files HTTP/1.1"
        assert sorted(empty_post.headers) == sorted([host, ("Content-Length", "0")])
        assert empty_post.body == b""
        assert get_.line == "GET /v1/models?limit=2 HTTP/1.1"
        assert sorted(get_.headers) == sorted([host, ("Accept", "*/*")])

    async def test_host_header_omits_the_default_port(self, wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
        server = await wire.serve(answer(OK))
        loop = asyncio.get_running_loop()
        dial = loop.create_connection
        dialled: list[tuple[str, int]] = []

        async def to_server(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                            **kwargs: object) -> tuple[asyncio.Transport, asyncio.Protocol]:
            dialled.append((host, port))
            return await dial(factory, "127.0.0.1", server.port, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(loop, "create_connection", to_server)
        client = wire.client("http://upstream.test/v1")
        assert await get(client) == b"ok"
        assert dialled == [("upstream.test", 80)]
        assert ("Host", "upstream.test") in server.requests[0].headers


class TestAnswers:
    async def test_content_length_answer_then_connection_reused(self, wire: Wire) -> None:
        server = await wire.serve(answer(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Mixed-Case: KeepMe\r\n"
            b"Content-Length: 11\r\n\r\n{\"ok\":true}"))
        client = wire.client(base(server))
        response = await client.send("GET", "/a", [], b"")
        assert response.status == 201
        assert response.headers == [(b"content-type", b"application/json"), (b"x-mixed-case", b"KeepMe"),
                                    (b"content-length", b"11")]
        assert await read_all(response) == b'{"ok":true}'
        assert await get(client, "/b") == b'{"ok":true}'
        assert [(r.connection, r.seq) for r in server.requests] == [(0, 0), (0, 1)]
        assert server.connections == 1

    async def test_chunked_answer_is_decoded_and_streamed(self, wire: Wire) -> None:
        pieces = [b"data: one\n\n", b"data: two\n\n", b"x" * 5000, b"tail"]
        first_seen = asyncio.Event()

        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
            for i, piece in enumerate(pieces):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                if i == 0 and request.seq == 0:
                    await first_seen.wait()  # the client must get the first chunk before the rest exists
                await asyncio.sleep(0.03)
            writer.write(b"0\r\n\r\n")
            return True

        server = await wire.serve(respond)
        client = wire.client(base(server))
        received: list[bytes] = []

        async def seen() -> None:
            first_seen.set()

        async with asyncio.timeout(3):
            await collect(await client.send("POST", "/chat/completions", [], b"{}"), received, seen)
            assert received == pieces
            assert await get(client) == b"".join(pieces)
        assert server.connections == 1

    async def test_connection_close_answer_is_not_reused(self, wire: Wire) -> None:
        server = await wire.serve(answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"))
        client = wire.client(base(server))
        assert await get(client) == b"ok"
        assert await get(client) == b"ok"
        assert server.connections == 2  # the server kept the first one open: only the client could decide

    async def test_head_answer_has_no_body_whatever_its_content_length(self, wire: Wire) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" if request.line.startswith("HEAD") else OK)
            return True

        server = await wire.serve(respond)
        client = wire.client(base(server), per_host=1)
        async with asyncio.timeout(2):
            response = await client.send("HEAD", "/files/f-1", [], b"")
            assert response.status == 200
            assert (b"content-length", b"100") in response.headers
            assert await read_all(response) == b""
            assert await get(client) == b"ok"
        assert "Content-Length" not in dict(server.requests[0].headers)

    async def test_interim_100_continue_is_skipped(self, wire: Wire) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(OK)
            return True

        server = await wire.serve(respond)
        client = wire.client(base(server))
        async with asyncio.timeout(2):
            response = await client.send("POST", "/files", [("Expect", "100-continue")], b"x" * 10)
            assert response.status == 200
            assert await read_all(response) == b"ok"

    async def test_answer_after_100_continue_does_not_reach_the_next_request(self, wire: Wire) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            if request.seq == 0:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nalice")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbob")
            return True

        server = await wire.serve(respond)
        client = wire.client(base(server), per_host=1)
        async with asyncio.timeout(2):
            await read_all(await client.send("POST", "/audio/transcriptions", [("Expect", "100-continue")], b"a"))
            assert await read_all(await client.send("POST", "/chat/completions", [], b"b")) == b"bob"

    async def test_body_delimited_by_close(self, wire: Wire) -> None:
        server = await wire.serve(answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world", keep=False))
        client = wire.client(base(server))
        async with asyncio.timeout(2):
            assert await get(client) == b"hello world"


class TestBrokenConnections:
    @pytest.mark.parametrize("drop", ["while_idle", "on_next_request"])
    async def test_stale_keep_alive_connection_is_retried_on_a_new_one(self, wire: Wire, drop: str) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            if request.seq == 1:
                return False  # read the request, answer nothing, close
            writer.write(OK)
            await writer.drain()
            return drop != "while_idle"

        server = await wire.serve(respond)
        client = wire.client(base(server), per_host=1)
        assert await get(client) == b"ok"
        if drop == "while_idle":
            await asyncio.wait_for(server.ended[0].wait(), 1)
            await asyncio.sleep(0.05)
        assert await get(client) == b"ok"
        assert server.connections == 2
        expected = [(0, 0), (1, 0)] if drop == "while_idle" else [(0, 0), (0, 1), (1, 0)]
        assert [(r.connection, r.seq) for r in server.requests] == expected

    @pytest.mark.parametrize("case", ["reused_partly_answered", "fresh_unanswered"])
    async def test_no_retry_once_answered_or_on_a_fresh_connection(self, wire: Wire, case: str) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            if case == "fresh_unanswered":
                return False
            writer.write(OK if request.seq == 0 else b"HTTP/1.1 200")
            await writer.drain()
            return request.seq == 0

        server = await wire.serve(respond)
        client = wire.client(base(server), per_host=1)
        if case == "reused_partly_answered":
            assert await get(client) == b"ok"
        with pytest.raises(UpstreamUnreachableError):
            await client.send("POST", "/chat/completions", [], b"{}")
        assert server.connections == 1
        assert [r.body for r in server.requests if r.line.startswith("POST")] == [b"{}"]

    async def test_close_mid_body_raises_and_the_next_call_uses_a_new_connection(self, wire: Wire) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            if request.connection > 0:
                writer.write(OK)
                return True
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            await writer.drain()
            return False

        server = await wire.serve(respond)
        client = wire.client(base(server), per_host=1)
        response = await client.send("GET", "/models", [], b"")
        received: list[bytes] = []
        with pytest.raises(UpstreamUnreachableError):
            await collect(response, received)
        assert b"".join(received) == b"x" * 10
        assert await get(client) == b"ok"
        assert server.connections == 2

    async def test_header_timeout(self, wire: Wire) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            if request.connection == 0:
                await asyncio.sleep(30)
            writer.write(OK)
            return True

        server = await wire.serve(respond)
        timeouts = Timeouts(request=5, response_header=0.3, idle_connection=30, connect=2)
        client = wire.client(base(server), timeouts=timeouts, per_host=1)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError):
            await client.send("GET", "/models", [], b"")
        assert 0.25 < time.monotonic() - started < 1.0
        assert await get(client) == b"ok"  # slot freed, the silent connection not reused
        assert server.connections == 2

    async def test_silence_mid_body_longer_than_the_request_timeout(self, wire: Wire) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await asyncio.sleep(30)
            return True

        server = await wire.serve(respond)
        timeouts = Timeouts(request=0.3, response_header=5, idle_connection=30, connect=2)
        client = wire.client(base(server), timeouts=timeouts)
        response = await client.send("GET", "/models", [], b"")
        received: list[bytes] = []
        started = time.monotonic()
        with pytest.raises(UpstreamUnreachableError):
            await collect(response, received)
        assert received == [b"abc"]
        assert 0.25 < time.monotonic() - started < 1.5

    async def test_nothing_listening(self, wire: Wire) -> None:
        client = wire.client(f"http://127.0.0.1:{free_port()}/v1", per_host=1)
        started = time.monotonic()
        for _ in range(2):  # the second would hang if the first kept its slot
            with pytest.raises(UpstreamUnreachableError):
                await client.send("GET", "/models", [], b"")
        assert time.monotonic() - started < 1.0


class TestHeaderInjection:
    @pytest.mark.parametrize(("name", "value", "path_qs"), [
        ("X-A", "1\r\nX-Smuggled: yes", "/models"),
        ("X-A", "1\nX-Smuggled: yes", "/models"),
        ("X-A", "1\rX-Smuggled: yes", "/models"),
        ("X-A\r\nX-Smuggled", "yes", "/models"),
        ("X-A", "1", "/models HTTP/1.1\r\nX-Smuggled: yes\r\nX-B: c"),
    ])
    async def test_line_break_is_refused_before_anything_is_sent(self, wire: Wire, name: str, value: str,
                                                                 path_qs: str) -> None:
        server = await wire.serve(answer(OK))
        client = wire.client(base(server), per_host=1)
        with pytest.raises(UpstreamUnreachableError):
            await client.send("GET", path_qs, [(name, value)], b"")
        assert await get(client) == b"ok"
        assert [r.line for r in server.requests] == ["GET /v1/models HTTP/1.1"]
        assert "X-Smuggled" not in server.requests[0].head

    async def test_a_value_outside_latin_1_is_an_upstream_error_not_a_crash(self, wire: Wire) -> None:
        server = await wire.serve(answer(OK))
        client = wire.client(base(server), per_host=1)
        with pytest.raises(UpstreamUnreachableError, match="Latin-1"):
            await client.send("GET", "/models", [("X-Org", "café ☕")], b"")
        assert await get(client) == b"ok"


class TestPool:
    async def test_release_mid_body_closes_the_connection_and_frees_the_slot(self, wire: Wire) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            if request.connection == 0:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
            else:
                writer.write(OK)
            await writer.drain()
            return True

        server = await wire.serve(respond)
        client = wire.client(base(server), per_host=1)
        async with asyncio.timeout(3):
            response = await client.send("GET", "/files/big", [], b"")
            assert response.status == 200
            response.release()
            assert await get(client) == b"ok"
            await server.ended[0].wait()
        assert server.connections == 2
        assert not server.ended[1].is_set()  # the finished one stays pooled

    async def test_idle_connection_older_than_idle_timeout_is_not_reused(self, wire: Wire) -> None:
        server = await wire.serve(answer(OK))
        timeouts = Timeouts(request=5, response_header=5, idle_connection=0.1, connect=2)
        client = wire.client(base(server), timeouts=timeouts)
        assert await get(client) == b"ok"
        assert await get(client) == b"ok"
        await asyncio.sleep(0.15)
        assert await get(client) == b"ok"
        assert [(r.connection, r.seq) for r in server.requests] == [(0, 0), (0, 1), (1, 0)]
        await asyncio.wait_for(server.ended[0].wait(), 1)

    async def test_at_most_per_host_connections_and_the_rest_wait(self, wire: Wire) -> None:
        async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
            await asyncio.sleep(0.2)
            writer.write(OK)
            return True

        server = await wire.serve(respond)
        client = wire.client(base(server), per_host=2)
        async with asyncio.timeout(3):
            bodies = await asyncio.gather(*(get(client) for _ in range(3)))
        assert bodies == [b"ok"] * 3
        assert server.max_open == 2
        assert server.connections == 2
        assert len(server.requests) == 3

    async def test_large_body_read_slowly_arrives_whole(self, wire: Wire) -> None:
        body = b"".join(i.to_bytes(4, "big") for i in range(512 * 1024))  # 2 MiB, no repeating pattern
        server = await wire.serve(answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)))
        client = wire.client(base(server))
        received: list[bytes] = []

        async def slowly() -> None:
            await asyncio.sleep(0.1 if len(received) == 1 else 0.002)  # lets the buffer pass its mark

        async with asyncio.timeout(8):
            await collect(await client.send("GET", "/files/big", [], b""), received, slowly)
            assert b"".join(received) == body
            assert len(received) > 1
            assert await get(client) == body  # complete, so the connection went back to the pool
        assert server.connections == 1


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for localhost and 127.0.0.1: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-proxy test CA")])
    usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                           "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(**usage | {"digital_signature": True, "key_cert_sign": True,
                                                  "crl_sign": True}), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TestTls:
    @pytest.fixture
    async def tls_server(self, wire: Wire, tmp_path: Path) -> tuple[ScriptedServer, Path]:
        pytest.importorskip("cryptography", reason="the TLS case makes its certificates with `cryptography`")
        ca, cert, key = write_tls_files(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return await wire.serve(answer(OK), tls=context), ca

    async def test_request_over_tls_with_the_trusted_ca(self, wire: Wire, tls_server: tuple[ScriptedServer, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        server, ca = tls_server
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # read by ssl.create_default_context() in the constructor
        client = wire.client(base(server, "https", "localhost"))
        async with asyncio.timeout(3):
            assert await get(client) == b"ok"
        assert server.requests[0].line == "GET /v1/models HTTP/1.1"
        assert ("Host", f"localhost:{server.port}") in server.requests[0].headers

    async def test_untrusted_certificate_is_unreachable(self, wire: Wire, tls_server: tuple[ScriptedServer, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        server, _ = tls_server
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        client = wire.client(base(server, "https", "localhost"))
        async with asyncio.timeout(3):
            with pytest.raises(UpstreamUnreachableError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.send("GET", "/models", [], b"")
        assert server.requests == []
