"""Who may get a cached answer and how hits are counted, end to end: revocation and quota still
apply, hits count per token and publish no event, a dead Redis only bypasses, and a disabled cache
does no work at all."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

from llm_proxy.events import decode_event
from tests.cache.conftest import CHAT, OPT_IN, cached_proxy, call, manage
from tests.live import LiveProxy, running_proxy

STREAM = {**CHAT, "stream": True}


async def issue(live: LiveProxy, project_id: str, **fields: Any) -> tuple[str, str]:
    """(token id, secret)."""
    status, body = await manage(live, "POST", "/manage/tokens",
                                {"project_id": project_id, "duration_minutes": 60, **fields})
    assert status == 200, body
    return body["id"], body["token"]


async def token_record(live: LiveProxy, token_id: str, hits: int, within: float = 5.0) -> dict[str, Any]:
    """The token once its flushed `cache_hit_count` reached `hits`."""
    deadline = time.monotonic() + within
    while True:
        _, record = await manage(live, "GET", f"/manage/tokens/{token_id}")
        if record["cache_hit_count"] >= hits or time.monotonic() > deadline:
            return dict(record)
        await asyncio.sleep(0.05)


class TestWhoGetsAHit:
    async def test_a_revoked_token_gets_no_cached_answer(self, mock_proxy: LiveProxy) -> None:
        project = await mock_proxy.create_project()
        revoked_id, revoked = await issue(mock_proxy, project["id"])
        _, other = await issue(mock_proxy, project["id"])
        assert (await call(mock_proxy, "POST", "/v1/chat/completions", revoked, json=CHAT, headers=OPT_IN)).cache \
            == "stored"
        assert (await manage(mock_proxy, "DELETE", f"/manage/tokens/{revoked_id}"))[0] == 204
        refused = await call(mock_proxy, "POST", "/v1/chat/completions", revoked, json=CHAT, headers=OPT_IN)
        assert refused.status == 401
        assert refused.json()["error"]["code"] == "token_inactive"
        assert (await call(mock_proxy, "POST", "/v1/chat/completions", other, json=CHAT, headers=OPT_IN)).cache \
            == "hit"

    async def test_a_token_whose_quota_is_used_up_gets_no_cached_answer(self, mock_proxy: LiveProxy) -> None:
        project = await mock_proxy.create_project()
        limited_id, limited = await issue(mock_proxy, project["id"], max_requests=2)
        stored = await call(mock_proxy, "POST", "/v1/chat/completions", limited, json=CHAT, headers=OPT_IN)
        hit = await call(mock_proxy, "POST", "/v1/chat/completions", limited, json=CHAT, headers=OPT_IN)
        assert (stored.cache, hit.cache) == ("stored", "hit")
        assert (await call(mock_proxy, "POST", "/v1/chat/completions", limited, json=CHAT)).status == 200
        refused = await call(mock_proxy, "POST", "/v1/chat/completions", limited, json=CHAT, headers=OPT_IN)
        assert refused.status == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        record = await token_record(mock_proxy, limited_id, hits=1)
        assert (record["request_count"], record["cache_hit_count"]) == (2, 1)


class TestCounting:
    async def test_hits_count_per_token_and_publish_no_event(self, tmp_path: Path) -> None:
        async with cached_proxy(tmp_path, "in-memory", {"FILE_EVENT_LOG": str(tmp_path / "events.jsonl")}) as live:
            project = await live.create_project()
            token_id, token = await issue(live, project["id"])
            for request_id in ("r-store", "r-hit-1", "r-hit-2"):
                await call(live, "POST", "/v1/chat/completions", token, json=CHAT,
                           headers={**OPT_IN, "X-Request-ID": request_id})
            record = await token_record(live, token_id, hits=2)
            _, stats = await manage(live, "GET", "/manage/cache/stats")
        events = [decode_event(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
        assert [(e.request_id, e.cache_status) for e in events] == [("r-store", "stored")]
        assert (record["request_count"], record["cache_hit_count"]) == (1, 2)
        assert (stats["hits"], stats["misses"], stats["stores"]) == (2, 1, 1)

    async def test_the_cache_emits_telemetry_events(self, mock_proxy: LiveProxy) -> None:
        assert mock_proxy.app.services is not None
        telemetry = mock_proxy.app.services.telemetry
        seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        names = ("llm_proxy.cache.hit", "llm_proxy.cache.miss", "llm_proxy.cache.put")
        telemetry.attach_many("test-cache-events", names, lambda name, m, md, _: seen.append((name, dict(m), dict(md))))
        try:
            project, token = await mock_proxy.project_token()
            for _ in range(2):
                await call(mock_proxy, "POST", "/v1/chat/completions", token, json=CHAT, headers=OPT_IN)
        finally:
            telemetry.detach("test-cache-events")
        mine = [(name, m, md) for name, m, md in seen if md["project_id"] == project["id"]]
        assert [name for name, _, _ in mine] == ["llm_proxy.cache.miss", "llm_proxy.cache.put", "llm_proxy.cache.hit"]
        (_, _, miss), (_, put, _), (_, hit, hit_md) = mine
        assert miss["reason"] == "miss"
        assert put["ttl"] == 60
        assert put["bytes"] == hit["bytes"] > 0
        assert hit_md["key"].startswith(project["id"] + ":")

    async def test_a_stream_the_client_abandons_is_not_stored(self, mock_proxy: LiveProxy) -> None:
        _, token = await mock_proxy.project_token()
        headers = {"Authorization": f"Bearer {token}", **OPT_IN, "X-Mock-Chunk-Delay-Ms": "100",
                   "X-Mock-Chunks": "20"}
        async with mock_proxy.http.post(f"{mock_proxy.url}/v1/chat/completions", json=STREAM,
                                        headers=headers) as resp:
            await resp.content.readany()
            resp.close()
        await asyncio.sleep(0.2)
        again = await call(mock_proxy, "POST", "/v1/chat/completions", token, json=STREAM, headers=OPT_IN)
        assert again.cache == "miss"
        assert again.body.rstrip().endswith(b"data: [DONE]")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TestDegradedAndDisabled:
    async def test_a_dead_redis_turns_caching_into_a_bypass(self, tmp_path: Path) -> None:
        env = {"HTTP_CACHE_BACKEND": "redis", "REDIS_CACHE_URL": f"redis://127.0.0.1:{closed_port()}/0",
               "REDIS_CACHE_TIMEOUT": "100ms"}
        async with cached_proxy(tmp_path, "in-memory", env) as live:
            _, token = await live.project_token()
            started = time.monotonic()
            for _ in range(3):
                answer = await call(live, "POST", "/v1/chat/completions", token, json=CHAT, headers=OPT_IN)
                assert (answer.status, answer.cache) == (200, "bypass")
                assert answer.headers["Cache-Status"] == "llm-proxy; fwd=bypass; detail=unavailable"
            assert time.monotonic() - started < 1.0
            status, stats = await manage(live, "GET", "/manage/cache/stats")
            assert (status, stats["available"], stats["bypasses"]) == (200, False, 3)
            status, body = await manage(live, "POST", "/manage/cache/purge", {"all": True})
            assert (status, body["code"]) == (503, "cache_unavailable")

    async def test_a_disabled_cache_does_no_work(self, tmp_path: Path) -> None:
        async with running_proxy(tmp_path, {"HTTP_CACHE_ENABLED": "false"}) as live:
            assert live.app.services is not None
            assert live.app.services.caching is None
            assert live.app.services.proxy.caching is None
            _, token = await live.project_token()
            for _ in range(2):
                answer = await call(live, "POST", "/v1/chat/completions", token, json=CHAT, headers=OPT_IN)
                assert answer.status == 200
                assert "X-PROXY-CACHE" not in answer.headers
                assert "Cache-Status" not in answer.headers
            status, body = await manage(live, "POST", "/manage/cache/purge", {"all": True})
            assert (status, body) == (400, {"error": "caching is disabled", "code": "caching_disabled"})
            status, stats = await manage(live, "GET", "/manage/cache/stats")
            assert (status, stats["enabled"], stats["backend"]) == (200, False, None)
