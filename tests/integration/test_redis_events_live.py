"""The proxy publishing to real Redis Streams: exact counts, and nothing lost while Redis is down."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.live import LiveProxy, running_proxy
from tests.services import PrivateRedis, require_redis_server, require_service

from llm_proxy.events import Event, decode_event

pytestmark = pytest.mark.redis

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello events"}]}


def redis_env(url: str, key: str) -> dict[str, str]:
    return {"LLM_PROXY_EVENT_BUS": "redis-streams", "REDIS_URL": url, "REDIS_STREAM_KEY": key,
            "REDIS_DEAD_LETTER_KEY": f"{key}-dead"}


async def stream_events(client: Redis, key: str) -> list[Event]:
    entries = await client.xrange(key)
    return [decode_event(fields[b"data"]) for _, fields in entries]


async def call(live: LiveProxy, token: str, request_id: str, stream: bool = False) -> int:
    body: dict[str, Any] = {**CHAT, "stream": stream}
    async with live.http.post(f"{live.url}/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id}) as resp:
        await resp.read()
        return resp.status


async def wait_for_count(client: Redis, key: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while await client.xlen(key) < count and time.monotonic() < deadline:  # noqa: ASYNC110 - polls Redis
        await asyncio.sleep(0.1)


class TestRedisStreamsFromTheProxy:
    async def test_n_requests_give_exactly_n_events(self, tmp_path: Path) -> None:
        require_service("Redis", "127.0.0.1", 6379)
        key = f"test-proxy-events-{uuid.uuid4().hex[:10]}"
        client = Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            async with running_proxy(tmp_path, redis_env("redis://127.0.0.1:6379/0", key)) as live:
                _, token = await live.project_token()
                statuses = await asyncio.gather(*(call(live, token, f"r-{i}", stream=i % 2 == 0) for i in range(20)))
                assert statuses == [200] * 20
                await wait_for_count(client, key, 20, within=5)
            events = await stream_events(client, key)
            assert sorted(e.request_id for e in events) == sorted(f"r-{i}" for i in range(20))
            assert {e.stream for e in events if e.request_id in {"r-0", "r-2"}} == {True}
            assert all(e.status == 200 and e.project_id and e.token_id for e in events)
        finally:
            await client.delete(key, f"{key}-dead")
            await client.aclose()

    async def test_redis_outage_under_load_loses_no_event_and_fails_no_request(self, tmp_path: Path) -> None:
        """A restart of a persistent Redis, as in production: what it had stays, what it missed is replayed."""
        require_redis_server()
        private_redis = PrivateRedis(tmp_path / "redis", persistent=True)
        (tmp_path / "redis").mkdir()
        private_redis.start()
        try:
            await self._outage_under_load(tmp_path, private_redis)
        finally:
            private_redis.stop()

    async def _outage_under_load(self, tmp_path: Path, private_redis: PrivateRedis) -> None:
        key = f"test-outage-{uuid.uuid4().hex[:10]}"
        async with running_proxy(tmp_path, redis_env(private_redis.url, key)) as live:
            _, token = await live.project_token()
            sent: list[str] = []
            statuses: list[int] = []

            async def load(worker: int, until: float) -> None:
                n = 0
                while time.monotonic() < until:
                    request_id = f"w{worker}-{n}"
                    statuses.append(await call(live, token, request_id, stream=n % 3 == 0))
                    sent.append(request_id)
                    n += 1
                    await asyncio.sleep(0.01)

            async def outage() -> None:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(private_redis.stop)
                await asyncio.sleep(3.0)
                await asyncio.to_thread(private_redis.start)

            until = time.monotonic() + 6.0
            await asyncio.gather(outage(), *(load(w, until) for w in range(4)))
            assert live.app.services is not None
            stats = live.app.services.bus.stats()
            assert stats.spooled > 0, "the outage did not hit the bus"
            client = Redis.from_url(private_redis.url)
            try:
                await wait_for_count(client, key, len(sent), within=20)
                seen = {e.request_id for e in await stream_events(client, key)}
            finally:
                await client.aclose()
        assert set(statuses) == {200}
        assert len(sent) > 50
        missing = set(sent) - seen
        assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
