from __future__ import annotations

import gzip
import json
import time

import aiohttp
import openai
import pytest

from llm_proxy.mock_upstream import start_mock
from tests.mock_upstream.conftest import AUTH, sse_data

CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}
STREAM = {**CHAT, "stream": True}


async def read_all(response: aiohttp.ClientResponse, into: list[bytes]) -> None:
    async for piece in response.content.iter_any():
        into.append(piece)


class TestOpenAIErrors:
    async def test_missing_or_non_bearer_authorization_is_401(self, mock):
        async with aiohttp.ClientSession(base_url=mock.url) as session:
            for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
                response = await session.post("/v1/chat/completions", json=CHAT, headers=headers)
                body = await response.json()
                assert response.status == 401
                assert body["error"]["type"] == "invalid_request_error"
                assert "API key" in body["error"]["message"]

    async def test_configured_key_must_match(self):
        async with await start_mock(api_key="sk-right") as mock, aiohttp.ClientSession(
            base_url=mock.url
        ) as session:
            wrong = await session.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"})
            right = await session.get("/v1/models", headers={"Authorization": "Bearer sk-right"})
            assert wrong.status == 401
            assert (await wrong.json())["error"]["code"] == "invalid_api_key"
            assert right.status == 200

    async def test_invalid_json_and_missing_fields_are_400(self, client):
        bad_json = await client.post(
            "/v1/chat/completions", data=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert bad_json.status == 400
        assert "parse the JSON body" in (await bad_json.json())["error"]["message"]
        no_model = await client.post("/v1/chat/completions", json={"messages": []})
        assert (await no_model.json())["error"]["param"] == "model"
        no_messages = await client.post("/v1/chat/completions", json={"model": "m"})
        assert (await no_messages.json())["error"]["param"] == "messages"

    async def test_unknown_path_or_method_is_404(self, client):
        for method, path in (("POST", "/v1/nothing"), ("GET", "/v1/chat/completions")):
            response = await client.request(method, path)
            assert response.status == 404
            assert (await response.json())["error"]["message"] == f"Invalid URL ({method} {path})"

    async def test_health_needs_no_key(self, mock):
        async with aiohttp.ClientSession(base_url=mock.url) as session:
            response = await session.get("/health")
            assert (await response.json()) == {"status": "ok"}


class TestStatusHook:
    async def test_sdk_sees_the_requested_status(self, sdk):
        with pytest.raises(openai.InternalServerError) as info:
            await sdk.chat.completions.create(
                model="m", messages=CHAT["messages"], extra_headers={"X-Mock-Status": "503"}
            )
        assert info.value.status_code == 503
        with pytest.raises(openai.RateLimitError):
            await sdk.models.list(extra_headers={"X-Mock-Status": "429"})

    async def test_malformed_hook_value_is_400(self, client):
        for name, value in (("X-Mock-Status", "200"), ("X-Mock-Chunks", "0"),
                            ("X-Mock-Latency-Ms", "soon")):
            response = await client.post("/v1/chat/completions", json=CHAT, headers={name: value})
            assert response.status == 400
            assert name in (await response.json())["error"]["message"]


class TestTimingHooks:
    async def test_latency_header_delays_the_reply(self, client):
        started = time.perf_counter()
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Mock-Latency-Ms": "120"}
        )
        assert response.status == 200
        assert time.perf_counter() - started >= 0.12

    async def test_server_latency_option_applies_to_every_request(self):
        async with await start_mock(latency_ms=80) as mock, aiohttp.ClientSession(
            base_url=mock.url, headers=AUTH
        ) as session:
            started = time.perf_counter()
            await (await session.get("/v1/models")).read()
            assert time.perf_counter() - started >= 0.08

    async def test_chunk_delay_paces_the_stream(self, client):
        headers = {"X-Mock-Chunk-Delay-Ms": "40", "X-Mock-Chunks": "2"}
        started = time.perf_counter()
        async with client.post("/v1/chat/completions", json=STREAM, headers=headers) as response:
            first = await response.content.readuntil(b"\n\n")
            first_at = time.perf_counter() - started
            rest = await response.content.read()
        total = time.perf_counter() - started
        assert b"assistant" in first
        assert total >= 4 * 0.04
        assert first_at < total - 0.08
        assert rest.endswith(b"data: [DONE]\n\n")


class TestConnectionHooks:
    async def test_drop_after_chunks_cuts_the_stream(self, client):
        headers = {"X-Mock-Drop-After-Chunks": "2"}
        async with client.post("/v1/chat/completions", json=STREAM, headers=headers) as response:
            assert response.status == 200
            received: list[bytes] = []
            with pytest.raises(aiohttp.ClientPayloadError):
                await read_all(response, received)
        assert b"".join(received).count(b"data: ") == 2

    async def test_drop_on_a_plain_request_sends_nothing(self, client):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.post(
                "/v1/chat/completions", json=CHAT, headers={"X-Mock-Drop-After-Chunks": "0"}
            )

    async def test_echo_headers_reports_what_arrived_even_without_a_key(self, mock):
        headers = {"X-Mock-Echo-Headers": "1", "X-Custom": "v1", "X-Request-ID": "rid-9"}
        async with aiohttp.ClientSession(base_url=mock.url) as session:
            response = await session.post("/v1/chat/completions?x=1", json=CHAT, headers=headers)
            body = await response.json()
        assert response.status == 200
        assert response.headers["X-Request-ID"] == "rid-9"
        assert body["method"] == "POST"
        assert body["target"] == "/v1/chat/completions?x=1"
        assert body["headers"]["x-custom"] == "v1"
        assert "authorization" not in body["headers"]
        assert ["X-Custom", "v1"] in body["header_list"]
        assert body["json"] == CHAT

    async def test_gzip_needs_both_the_hook_and_accept_encoding(self, mock):
        async with aiohttp.ClientSession(
            base_url=mock.url, headers=AUTH, auto_decompress=False
        ) as session:
            headers = {"X-Mock-Gzip": "1", "Accept-Encoding": "gzip"}
            zipped = await session.post("/v1/chat/completions", json=CHAT, headers=headers)
            raw = await zipped.read()
            plain = await session.post(
                "/v1/chat/completions", json=CHAT, headers={"Accept-Encoding": "gzip"}
            )
            assert plain.headers.get("Content-Encoding") is None
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert json.loads(gzip.decompress(raw))["choices"][0]["message"]["content"] == (
            "one two three"
        )

    async def test_gzipped_stream_decodes_to_the_same_frames(self, client):
        headers = {"X-Mock-Gzip": "1", "Accept-Encoding": "gzip"}
        response = await client.post("/v1/chat/completions", json=STREAM, headers=headers)
        assert response.headers["Content-Encoding"] == "gzip"
        data = sse_data(await response.text())
        assert data[-1] == "[DONE]"
        assert len(data) == 1 + 4 + 1 + 1
