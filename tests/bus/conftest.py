"""Bus fixtures: event factory, Redis settings with a per-test stream, a private redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from llm_proxy.bus.redis_streams import RedisStreamsBus
from llm_proxy.bus.spool import Spool
from llm_proxy.events import Event
from llm_proxy.settings import RedisSettings, load_settings
from tests.services import PrivateRedis, require_redis_server, require_service

T0 = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def make_event(i: int = 0, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "request_id": f"req-{i}", "started_at": T0 + timedelta(seconds=i),
        "ended_at": T0 + timedelta(seconds=i, milliseconds=250), "duration_ms": 250.0,
        "method": "POST", "path": "/v1/chat/completions", "status": 200, "provider": "openai",
        "model": "gpt-4o-mini", "project_id": "p-1", "token_id": "t-1",
        "request_body": b'{"model":"gpt-4o-mini"}', "response_body": b'{"id":"x"}',
    }
    values.update(fields)
    return Event(**values)


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Poll `predicate` every 10 ms until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


def redis_settings_for(url: str, **env: str) -> RedisSettings:
    key = f"test-events-{uuid.uuid4().hex[:12]}"
    values = {
        "REDIS_URL": url, "REDIS_STREAM_KEY": key, "REDIS_DEAD_LETTER_KEY": f"{key}-dead",
        "REDIS_CONSUMER_GROUP": "dispatchers", "REDIS_STREAM_BLOCK_TIME": "0.2",
        "REDIS_STREAM_CLAIM_TIME": "0.2", "REDIS_STREAM_BATCH_SIZE": "50",
    }
    values.update(env)
    return load_settings(values, require_management_token=False).redis


@pytest_asyncio.fixture
async def redis_settings() -> AsyncIterator[RedisSettings]:
    """Settings on the shared Redis with a stream key of this test only, deleted afterwards."""
    require_service("Redis", "127.0.0.1", 6379)
    settings = redis_settings_for("redis://127.0.0.1:6379/0")
    yield settings
    client = Redis.from_url(settings.connection_url())
    await client.delete(settings.stream_key, settings.dead_letter_key)
    await client.aclose()


@pytest_asyncio.fixture
async def raw_redis(redis_settings: RedisSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_settings.connection_url())
    yield client
    await client.aclose()


BusFactory = Callable[..., RedisStreamsBus]


@pytest_asyncio.fixture
async def make_bus(tmp_path: Path) -> AsyncIterator[BusFactory]:
    """Build RedisStreamsBus instances with fast reconnects; every one is closed at the end."""
    buses: list[RedisStreamsBus] = []

    def build(settings: RedisSettings, *, spool_dir: Path | None = None,
              spool_max_bytes: int = 8 << 20, buffer_size: int = 1000,
              shutdown_timeout: float = 2.0) -> RedisStreamsBus:
        spool = Spool(spool_dir or tmp_path / "spool", spool_max_bytes, segment_bytes=4096)
        bus = RedisStreamsBus(settings, spool, buffer_size=buffer_size, reconnect_delay=0.02,
                              reconnect_max_delay=0.1, shutdown_timeout=shutdown_timeout)
        buses.append(bus)
        return bus

    yield build
    for bus in buses:
        await bus.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    require_redis_server()
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
