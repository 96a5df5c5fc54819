from __future__ import annotations

import asyncio
import json
import urllib.request

from llm_proxy.mock_upstream import MockServer, ThreadedMock

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "ping pong"}]}).encode()


def chat_request(extra: str = "", body: bytes = BODY, version: str = "1.1") -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: mock\r\n"
        f"Authorization: Bearer sk-test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode().split("\r\n")[:-2]
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = await asyncio.wait_for(reader.read(), 5)
    return int(status_line.split()[1]), headers, body


async def connect(mock: MockServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", mock.port)


class TestKeepAlive:
    async def test_several_requests_share_one_connection(self, mock):
        reader, writer = await connect(mock)
        models = b"GET /v1/models HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer k\r\n\r\n"
        for raw in (chat_request(), models, chat_request(), models):
            writer.write(raw)
            status, headers, body = await read_response(reader)
            assert status == 200
            assert "connection" not in headers
            assert json.loads(body)["object"] in ("chat.completion", "list")
        writer.close()

    async def test_pipelined_requests_are_answered_in_order(self, mock):
        reader, writer = await connect(mock)
        writer.write(
            chat_request("X-Request-ID: slow\r\nX-Mock-Latency-Ms: 50\r\n")
            + chat_request("X-Request-ID: fast\r\n")
        )
        first = await read_response(reader)
        second = await read_response(reader)
        assert [first[1]["x-request-id"], second[1]["x-request-id"]] == ["slow", "fast"]
        writer.close()

    async def test_connection_close_is_honoured(self, mock):
        reader, writer = await connect(mock)
        writer.write(chat_request("Connection: close\r\n"))
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


class TestRequestFraming:
    async def test_chunked_request_body(self, mock):
        reader, writer = await connect(mock)
        half = len(BODY) // 2
        chunks = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (BODY[:half], BODY[half:]))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer k\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        status, _, body = await read_response(reader)
        assert status == 200
        assert json.loads(body)["choices"][0]["message"]["content"] == "ping pong"
        writer.close()

    async def test_expect_continue_gets_an_interim_100(self, mock):
        reader, writer = await connect(mock)
        writer.write(chat_request("Expect: 100-continue\r\n", body=b""))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.close()

    async def test_http10_stream_ends_by_closing(self, mock):
        reader, writer = await connect(mock)
        stream = json.dumps({**json.loads(BODY), "stream": True}).encode()
        writer.write(chat_request(body=stream, version="1.0"))
        status, headers, body = await read_response(reader)
        assert status == 200
        assert "transfer-encoding" not in headers
        assert body.endswith(b"data: [DONE]\n\n")
        writer.close()

    async def test_malformed_request_gets_400_and_close(self, mock):
        reader, writer = await connect(mock)
        writer.write(b"NOT-HTTP\x00\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 400
        assert headers["connection"] == "close"
        assert "Malformed HTTP request" in json.loads(body)["error"]["message"]
        writer.close()


class TestServerObjects:
    def test_threaded_mock_serves_synchronous_clients(self):
        with ThreadedMock(chunks=3) as mock:
            request = urllib.request.Request(
                mock.base_url + "/models", headers={"Authorization": "Bearer k"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert json.load(response)["object"] == "list"
        assert mock.url.startswith("http://127.0.0.1:")

    async def test_close_drops_open_connections(self, mock):
        reader, writer = await connect(mock)
        writer.write(chat_request())
        await read_response(reader)
        await mock.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
