"""Cache fixtures: both backends, the Redis one on the real server with a per-test key prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDictProxy
from redis.asyncio import Redis

from llm_proxy.cache import CachedResponse, ResponseCache
from llm_proxy.cache.memory import MemoryCache
from llm_proxy.cache.redis import RedisCache, make_client
from tests.cache.upstream import HeaderUpstream, header_upstream
from tests.live import LiveProxy, running_proxy
from tests.services import require_service

REDIS_URL = "redis://127.0.0.1:6379/0"


def entry(body: bytes = b'{"ok":true}', *, fingerprint: str = "fp", expires_at: float = 4e9,
          headers: list[tuple[bytes, bytes]] | None = None) -> CachedResponse:
    return CachedResponse(fingerprint, 200, headers or [(b"content-type", b"application/json")], body,
                          stored_at=1.7e9, expires_at=expires_at)


def unique_prefix() -> str:
    return f"llm-proxy-test:{uuid.uuid4().hex[:12]}:"


async def delete_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    require_service("Redis", "127.0.0.1", 6379)
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_cache(redis_client: Redis) -> AsyncIterator[RedisCache]:
    prefix = unique_prefix()
    cache = RedisCache(make_client(REDIS_URL, pool_size=4, timeout=1.0), prefix=prefix, timeout=1.0, scan_count=50)
    yield cache
    await delete_prefix(redis_client, prefix)
    await cache.aclose()


@pytest.fixture(params=["in-memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[ResponseCache]:
    if request.param == "in-memory":
        memory = MemoryCache(1024 * 1024)
        yield memory
        await memory.aclose()
        return
    require_service("Redis", "127.0.0.1", 6379)
    prefix = unique_prefix()
    cache = RedisCache(make_client(REDIS_URL, pool_size=4, timeout=1.0), prefix=prefix, timeout=1.0, scan_count=50)
    yield cache
    await delete_prefix(cache.client, prefix)
    await cache.aclose()


# --- live servers ---------------------------------------------------------------------------------

BACKENDS = ["in-memory", pytest.param("redis", marks=pytest.mark.redis)]
OPT_IN = {"Cache-Control": "public, max-age=60"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cache me if you can"}]}


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def cache(self) -> str | None:
        return self.headers.get("X-PROXY-CACHE")

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(live: LiveProxy, method: str, path: str, token: str, *, json: Any = None,
               headers: dict[str, str] | None = None) -> Answer:
    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with live.http.request(method, live.url + path, json=json, headers=sent) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


async def manage(live: LiveProxy, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with live.http.request(method, live.url + path, json=body, headers=live.manage_headers) as resp:
        return resp.status, await resp.json(content_type=None)


@asynccontextmanager
async def cached_proxy(tmp: Path, backend: str, env: dict[str, str] | None = None) -> AsyncIterator[LiveProxy]:
    """A live proxy with the cache on (streams too) and usage counters flushed every 100 ms."""
    settings = {"HTTP_CACHE_ENABLED": "true", "HTTP_CACHE_BACKEND": backend,
                "HTTP_CACHE_STREAM_RESPONSES": "true", "USAGE_STATS_FLUSH_INTERVAL": "100ms"}
    prefix = unique_prefix()
    if backend == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        settings |= {"REDIS_CACHE_URL": REDIS_URL, "REDIS_CACHE_KEY_PREFIX": prefix}
    try:
        async with running_proxy(tmp, settings | (env or {})) as live:
            yield live
    finally:
        if backend == "redis":
            client = Redis.from_url(REDIS_URL)
            await delete_prefix(client, prefix)
            await client.aclose()


@pytest.fixture(params=BACKENDS)
async def mock_proxy(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveProxy]:
    """In front of the bundled mock upstream."""
    async with cached_proxy(tmp_path, request.param) as live:
        yield live


@pytest.fixture
async def upstream() -> AsyncIterator[HeaderUpstream]:
    async with header_upstream() as server:
        yield server


@pytest.fixture(params=BACKENDS)
async def header_proxy(request: pytest.FixtureRequest, tmp_path: Path,
                       upstream: HeaderUpstream) -> AsyncIterator[LiveProxy]:
    """In front of `HeaderUpstream`, whose caching headers each request chooses."""
    async with cached_proxy(tmp_path, request.param, {"OPENAI_API_URL": upstream.url}) as live:
        yield live
