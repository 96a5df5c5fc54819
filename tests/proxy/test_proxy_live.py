"""The /v1/* data plane end to end: a real server, the real mock upstream, real SQLite."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from tests.live import LiveProxy, running_proxy

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there proxy"}]}


@pytest.fixture
async def proxy(tmp_path: Path) -> Any:
    async with running_proxy(tmp_path) as live:
        yield live


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_chat(proxy: LiveProxy, token: str, body: dict[str, Any] | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body or CHAT,
                               headers={**bearer(token), **(headers or {})}) as resp:
        payload = await resp.json(content_type=None)
        return resp.status, resp.headers.copy(), payload


class TestForwarding:
    @pytest.fixture(params=["native", "aiohttp"])
    async def proxy(self, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
        """Both upstream clients (LLM_PROXY_UPSTREAM_CLIENT) forward alike."""
        async with running_proxy(tmp_path, {"LLM_PROXY_UPSTREAM_CLIENT": request.param}) as live:
            yield live

    async def test_chat_completion_is_forwarded_with_the_project_key(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token()
        status, headers, payload = await post_chat(proxy, token, headers={
            "X-Mock-Echo-Headers": "1", "X-Forwarded-For": "203.0.113.9", "Cookie": "a=b",
        })
        assert status == 200, payload
        received = {k.lower(): v for k, v in payload["headers"].items()}
        assert received["authorization"] == "Bearer sk-mock-upstream-key"
        assert token not in orjson.dumps(payload).decode()
        assert "x-forwarded-for" not in received and "cookie" not in received
        assert received["x-request-id"] == headers["X-Request-ID"]
        assert headers["X-Proxy"] == "llm-proxy"

    async def test_well_formed_request_ids_are_kept_and_others_replaced(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token()
        _, kept, _ = await post_chat(proxy, token, headers={"X-Request-ID": "req-123.abc"})
        _, replaced, _ = await post_chat(proxy, token, headers={"X-Request-ID": "bad id <script>"})
        assert kept["X-Request-ID"] == "req-123.abc"
        assert replaced["X-Request-ID"] != "bad id <script>" and len(replaced["X-Request-ID"]) == 36

    async def test_stream_chunks_reach_the_client_as_they_are_produced(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token()
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        arrivals: list[float] = []
        data = b""
        loop = asyncio.get_running_loop()
        async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body,
                                   headers={**bearer(token), "X-Mock-Chunk-Delay-Ms": "60",
                                            "X-Mock-Chunks": "4"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for chunk in resp.content.iter_any():
                arrivals.append(loop.time())
                data += chunk
        assert data.rstrip().endswith(b"data: [DONE]")
        assert b'"usage"' in data
        assert len(arrivals) >= 3, "the stream was buffered instead of relayed"
        assert arrivals[-1] - arrivals[0] >= 0.12

    async def test_multipart_audio_passes_through_untouched(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token()
        form = aiohttp.FormData()
        form.add_field("model", "whisper-1")
        form.add_field("file", b"RIFF....WAVEfmt fake audio", filename="a.wav", content_type="audio/wav")
        async with proxy.http.post(f"{proxy.url}/v1/audio/transcriptions", data=form,
                                   headers=bearer(token)) as resp:
            assert resp.status == 200, await resp.text()
            assert "text" in await resp.json()

    async def test_upstream_errors_pass_through_verbatim(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token()
        status, _, payload = await post_chat(proxy, token, headers={"X-Mock-Status": "429"})
        assert status == 429
        assert "error" in payload

    async def test_cors_preflight_needs_no_token(self, proxy: LiveProxy) -> None:
        async with proxy.http.options(f"{proxy.url}/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Headers": "authorization, content-type",
        }) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]

    async def test_cors_headers_on_errors_too(self, proxy: LiveProxy) -> None:
        async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=CHAT,
                                   headers={"Origin": "https://app.example"}) as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"


class TestErrorCatalogue:
    async def expect(self, proxy: LiveProxy, status: int, code: str, **request: Any) -> dict[str, Any]:
        method = request.pop("method", "POST")
        path = request.pop("path", "/v1/chat/completions")
        async with proxy.http.request(method, f"{proxy.url}{path}", **request) as resp:
            assert resp.status == status, await resp.text()
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers.get("X-Request-ID")
            payload: dict[str, Any] = await resp.json()
        assert payload["error"]["code"] == code
        assert set(payload["error"]) == {"message", "type", "code", "param"}
        return payload

    async def test_authentication_errors(self, proxy: LiveProxy) -> None:
        await self.expect(proxy, 401, "invalid_token", json=CHAT)
        await self.expect(proxy, 401, "invalid_token", json=CHAT, headers={"Authorization": "Basic abc"})
        await self.expect(proxy, 401, "invalid_token", json=CHAT, headers=bearer("sk-tooshort"))
        await self.expect(proxy, 401, "token_not_found", json=CHAT, headers=bearer("sk-" + "A" * 22))

    async def test_revoked_token_is_refused_on_the_next_request(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token()
        assert (await post_chat(proxy, token))[0] == 200
        async with proxy.http.get(f"{proxy.url}/manage/tokens", headers=proxy.manage_headers) as resp:
            token_id = (await resp.json())[0]["id"]
        async with proxy.http.delete(f"{proxy.url}/manage/tokens/{token_id}", headers=proxy.manage_headers) as resp:
            assert resp.status == 204
        await self.expect(proxy, 401, "token_inactive", json=CHAT, headers=bearer(token))

    async def test_expired_token(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token()
        assert proxy.app.services is not None
        storage = proxy.app.services.storage
        (record,) = await storage.tokens.list()
        await storage.tokens.update(record.id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
        proxy.app.services.authenticator.forget_token(record.id)
        await self.expect(proxy, 401, "token_expired", json=CHAT, headers=bearer(token))

    async def test_inactive_project_is_403(self, proxy: LiveProxy) -> None:
        project, token = await proxy.project_token()
        assert (await post_chat(proxy, token))[0] == 200
        async with proxy.http.patch(f"{proxy.url}/manage/projects/{project['id']}", json={"is_active": False},
                                    headers=proxy.manage_headers) as resp:
            assert resp.status == 200
        await self.expect(proxy, 403, "project_inactive", json=CHAT, headers=bearer(token))

    async def test_validation_errors_come_before_authentication(self, proxy: LiveProxy) -> None:
        await self.expect(proxy, 404, "endpoint_not_found", json=CHAT, path="/v1/unknown")
        await self.expect(proxy, 405, "method_not_allowed", method="PUT", json=CHAT)

    async def test_malformed_json_and_huge_bodies(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token()
        await self.expect(proxy, 400, "invalid_json", data=b"{not json",
                          headers={**bearer(token), "Content-Type": "application/json"})
        await self.expect(proxy, 413, "request_too_large", data=b"x" * (10 * 1024 * 1024 + 1),
                          headers={**bearer(token), "Content-Type": "application/json"})

    async def test_quota_holds_under_50_concurrent_requests(self, proxy: LiveProxy) -> None:
        _, token = await proxy.project_token(max_requests=10)
        statuses = await asyncio.gather(*(post_chat(proxy, token) for _ in range(50)))
        codes = [s for s, _, _ in statuses]
        assert codes.count(200) == 10
        assert codes.count(429) == 40
        assert {p["error"]["code"] for s, _, p in statuses if s == 429} == {"rate_limit_exceeded"}

    async def test_paths_outside_v1_and_manage_are_json_404(self, proxy: LiveProxy) -> None:
        async with proxy.http.get(f"{proxy.url}/nothing-here") as resp:
            assert resp.status == 404
            assert resp.headers["Content-Type"] == "application/json"


class TestUpstreamFailures:
    async def test_unreachable_upstream_is_502_then_the_breaker_opens(self, tmp_path: Path) -> None:
        async with running_proxy(tmp_path) as live:
            _, token = await live.project_token()
            await live.mock.close()
            codes = [(await post_chat(live, token))[2]["error"]["code"] for _ in range(6)]
        assert codes[:5] == ["upstream_unreachable"] * 5
        assert codes[5] == "upstream_unavailable"

    async def test_slow_upstream_headers_are_a_504(self, tmp_path: Path) -> None:
        providers = tmp_path / "providers.yaml"
        providers.write_text(
            "apis:\n  openai:\n    base_url: ${OPENAI_API_URL}\n"
            "    allowed_endpoints: [/v1/chat/completions]\n    allowed_methods: [POST]\n"
            "    timeouts: {response_header: 300ms}\n"
        )
        async with running_proxy(tmp_path, {"API_CONFIG_PATH": str(providers)}) as live:
            _, token = await live.project_token()
            status, _, payload = await post_chat(live, token, headers={"X-Mock-Latency-Ms": "2000"})
        assert status == 504 and payload["error"]["code"] == "timeout"

    async def test_health_ready_and_live(self, proxy: LiveProxy) -> None:
        for path, field, value in (("/health", "status", "ok"), ("/ready", "status", "ready"),
                                   ("/live", "status", "alive")):
            async with proxy.http.get(f"{proxy.url}{path}") as resp:
                assert resp.status == 200
                assert (await resp.json())[field] == value


async def test_the_breaker_s_threshold_and_cooldown_are_settings(tmp_path: Path) -> None:
    async with running_proxy(tmp_path, {"CIRCUIT_BREAKER_THRESHOLD": "2", "CIRCUIT_BREAKER_COOLDOWN": "300ms"}) as live:
        _, token = await live.project_token()
        failing = {"X-Mock-Status": "503"}
        assert [(await post_chat(live, token, headers=failing))[0] for _ in range(3)] == [503, 503, 503]
        status, headers, payload = await post_chat(live, token)
        assert (status, payload["error"]["code"]) == (503, "upstream_unavailable")  # open: not forwarded
        assert headers["Retry-After"] == "1"
        await asyncio.sleep(0.35)
        assert (await post_chat(live, token))[0] == 200  # the probe succeeded: closed again
        assert (await post_chat(live, token))[0] == 200


@pytest.mark.parametrize("request_bytes", [
    b"FOO /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
])
async def test_requests_that_are_not_valid_http_get_the_json_error_envelope(
        proxy: LiveProxy, request_bytes: bytes) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request_bytes)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http_request")
    assert error["message"]
