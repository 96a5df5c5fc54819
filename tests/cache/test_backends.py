"""Both cache backends keep entries under keys until they expire; the memory one stays within its
byte budget, the Redis one degrades to a fast failure when Redis is slow or gone."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llm_proxy.cache import (
    CACHES,
    CacheUnavailableError,
    KeySelector,
    ResponseCache,
    VaryIndex,
    build_cache,
)
from llm_proxy.cache.memory import MemoryCache, entry_size
from llm_proxy.cache.redis import RedisCache, make_client
from llm_proxy.errors import ConfigError
from llm_proxy.settings import load_settings
from tests.cache.conftest import REDIS_URL, entry

P1 = "11111111-1111-4111-8111-111111111111"
P2 = "22222222-2222-4222-8222-222222222222"


class TestRegistry:
    @pytest.mark.parametrize("name", sorted(CACHES))
    def test_every_entry_imports_and_has_every_protocol_method(self, name: str) -> None:
        module_name, _, attr = CACHES[name].partition(":")
        cls = getattr(__import__(module_name, fromlist=[attr]), attr)
        for member in ("get", "set", "purge", "stats", "aclose"):
            assert inspect.iscoroutinefunction(getattr(cls, member)), member
            assert inspect.iscoroutinefunction(getattr(ResponseCache, member)), member

    def test_build_cache_follows_the_backend_setting(self) -> None:
        settings = load_settings({"HTTP_CACHE_BACKEND": "memory", "HTTP_CACHE_MAX_MEMORY_BYTES": "1MB"},
                                 require_management_token=False)
        cache = build_cache(settings.cache, settings.redis)
        assert isinstance(cache, MemoryCache)
        assert cache.max_bytes == 1024 * 1024

    def test_an_unknown_backend_is_a_config_error_naming_the_valid_ones(self) -> None:
        with pytest.raises(ConfigError, match="HTTP_CACHE_BACKEND"):
            load_settings({"HTTP_CACHE_BACKEND": "memcached"}, require_management_token=False)


class TestCacheSettings:
    def test_defaults_are_the_documented_ones(self) -> None:
        cache = load_settings({}, require_management_token=False).cache
        assert (cache.enabled, cache.backend, cache.stream_responses) == (True, "in-memory", False)
        assert (cache.default_ttl, cache.max_object_bytes, cache.key_prefix) == (300.0, 1048576, "llmproxy:cache:")

    def test_the_redis_url_falls_back_to_the_shared_redis_connection(self) -> None:
        settings = load_settings({"REDIS_ADDR": "10.0.0.5:6380", "REDIS_DB": "3"}, require_management_token=False)
        assert settings.cache.redis_connection_url(settings.redis) == "redis://10.0.0.5:6380/3"
        own = load_settings({"REDIS_CACHE_URL": "redis://cache:6379/1"}, require_management_token=False)
        assert own.cache.redis_connection_url(own.redis) == "redis://cache:6379/1"

    def test_a_zero_timeout_and_a_bad_size_are_start_up_errors(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings({"REDIS_CACHE_TIMEOUT": "0", "HTTP_CACHE_MAX_OBJECT_BYTES": "lots"},
                          require_management_token=False)
        assert {problem.split(":")[0] for problem in caught.value.problems} == {
            "REDIS_CACHE_TIMEOUT", "HTTP_CACHE_MAX_OBJECT_BYTES"}


class TestBackends:
    async def test_an_entry_round_trips_with_its_headers_and_body(self, backend: ResponseCache) -> None:
        stored = entry(b"\x00binary\xff", headers=[(b"etag", b'"v1"'), (b"content-type", b"text/plain")])
        assert await backend.set("k1", stored, 60)
        assert await backend.get("k1") == stored
        index = VaryIndex(("accept-language",), 4e9)
        assert await backend.set("k2", index, 60)
        assert await backend.get("k2") == index
        assert await backend.get("absent") is None

    async def test_set_replaces_and_a_non_positive_ttl_stores_nothing(self, backend: ResponseCache) -> None:
        await backend.set("k", entry(b"one"), 60)
        await backend.set("k", entry(b"two"), 60)
        found = await backend.get("k")
        assert found is not None
        assert found == entry(b"two")
        assert not await backend.set("z", entry(), 0)
        assert await backend.get("z") is None

    async def test_entries_expire_after_their_ttl(self, backend: ResponseCache) -> None:
        await backend.set("short", entry(expires_at=time.time() + 0.05), 0.05)
        assert await backend.get("short") is not None
        await asyncio.sleep(0.12)
        assert await backend.get("short") is None

    async def test_purge_deletes_exactly_the_selected_keys(self, backend: ResponseCache) -> None:
        keys = [f"{P1}:/v1/models:GET:a.b.c", f"{P1}:/v1/models:GET:a.b.c~v1", f"{P1}:/v1/chat:POST:q.b.h",
                f"{P2}:/v1/models:GET:a.b.c", f"{P2}:/v1/models*[x]:GET:a.b.c"]
        for key in keys:
            await backend.set(key, entry(), 60)
        assert await backend.purge(KeySelector(f"{P1}:/v1/models:GET:a.")) == 2
        assert await backend.purge(KeySelector("/v1/models*[", any_project=True)) == 1
        assert await backend.purge(KeySelector(f"{P2}:")) == 1
        assert [await backend.get(k) is not None for k in keys] == [False, False, True, False, False]
        assert await backend.purge(KeySelector("")) == 1
        assert (await backend.stats()).entries == 0

    async def test_stats_count_the_entries(self, backend: ResponseCache) -> None:
        for i in range(3):
            await backend.set(f"{P1}:/v1/x:GET:{i}", entry(), 60)
        stats = await backend.stats()
        assert stats.available
        assert stats.entries == 3
        assert stats.errors == 0


class TestMemoryCache:
    def test_the_budget_counts_key_headers_body_and_overhead(self) -> None:
        small, big = entry(b"x"), entry(b"x" * 1000)
        assert entry_size("k", big) - entry_size("k", small) == 999
        assert entry_size("kk", small) - entry_size("k", small) == 1

    async def test_least_recently_used_entries_are_evicted_to_stay_within_the_budget(self) -> None:
        evicted: list[tuple[str, int]] = []
        size = entry_size("a", entry(b"x" * 100))
        cache = MemoryCache(size * 3, on_evict=lambda key, n: evicted.append((key, n)))
        for key in "abc":
            await cache.set(key, entry(b"x" * 100), 60)
        assert await cache.get("a") is not None
        await cache.set("d", entry(b"x" * 100), 60)
        assert await cache.get("b") is None
        assert await cache.get("a") is not None
        assert evicted == [("b", size)]
        stats = await cache.stats()
        assert (stats.entries, stats.bytes, stats.evictions) == (3, size * 3, 1)

    async def test_an_entry_larger_than_the_budget_is_refused_without_evicting(self) -> None:
        cache = MemoryCache(2000)
        await cache.set("keep", entry(b"x"), 60)
        assert not await cache.set("huge", entry(b"x" * 5000), 60)
        assert await cache.get("keep") is not None

    async def test_dropping_expired_entries_is_not_counted_as_an_eviction(self) -> None:
        now = [1000.0]
        evicted: list[str] = []
        size = entry_size("a", entry(b"x" * 100))
        cache = MemoryCache(size * 2, on_evict=lambda key, n: evicted.append(key), now=lambda: now[0])
        await cache.set("a", entry(b"x" * 100, expires_at=1010.0), 10)
        await cache.set("b", entry(b"x" * 100, expires_at=2000.0), 1000)
        now[0] = 1011.0
        await cache.set("c", entry(b"x" * 100, expires_at=2000.0), 1000)
        assert evicted == []
        assert (await cache.stats()).evictions == 0
        assert await cache.get("b") is not None

    async def test_an_eviction_is_reported_to_the_telemetry_observer(self) -> None:
        seen: list[tuple[str, dict[str, float], dict[str, object]]] = []
        settings = load_settings({"HTTP_CACHE_MAX_MEMORY_BYTES": "600"}, require_management_token=False)
        cache = build_cache(settings.cache, settings.redis,
                            observer=lambda name, m, md: seen.append((name, dict(m), dict(md))))
        await cache.set("a", entry(b"x" * 200), 60)
        await cache.set("b", entry(b"x" * 200), 60)
        assert [(name, m["count"], md["key"]) for name, m, md in seen] == [("llm_proxy.cache.evicted", 1.0, "a")]


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers: a Redis that hangs."""
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.redis
class TestRedisCache:
    async def test_keys_carry_the_configured_prefix_and_redis_expiry(self, redis_cache: RedisCache,
                                                                     redis_client: Redis) -> None:
        await redis_cache.set("p:/v1/models:GET:x", entry(), 30)
        ttl = await redis_client.pttl(redis_cache.prefix + "p:/v1/models:GET:x")
        assert 29_000 < ttl <= 30_000

    async def test_an_undecodable_value_is_a_miss(self, redis_cache: RedisCache, redis_client: Redis) -> None:
        await redis_client.set(redis_cache.prefix + "junk", b"not msgpack \xc1", px=10_000)
        assert await redis_cache.get("junk") is None

    async def test_stats_count_only_this_prefix(self, redis_cache: RedisCache, redis_client: Redis) -> None:
        other = redis_cache.prefix.rstrip(":") + "-other:"
        await redis_client.set(other + "x", b"1", px=10_000)
        try:
            await redis_cache.set("mine", entry(), 30)
            assert (await redis_cache.stats()).entries == 1
        finally:
            await redis_client.delete(other + "x")

    async def test_a_hanging_redis_fails_within_the_timeout_then_at_once_until_the_retry(
            self, silent_server: int) -> None:
        cache = RedisCache(make_client(f"redis://127.0.0.1:{silent_server}/0", pool_size=2, timeout=0.05),
                           prefix="t:", timeout=0.05, retry_interval=0.2)
        try:
            started = time.monotonic()
            with pytest.raises(CacheUnavailableError):
                await cache.get("k")
            assert time.monotonic() - started < 0.5
            started = time.monotonic()
            with pytest.raises(CacheUnavailableError):
                await cache.set("k", entry(), 60)
            assert time.monotonic() - started < 0.01, "a known-down Redis must not be waited for again"
            stats = await cache.stats()
            assert not stats.available
            assert stats.entries is None
            assert stats.errors == 1
        finally:
            await cache.aclose()

    async def test_an_unreachable_redis_recovers_after_the_retry_interval(self, redis_client: Redis) -> None:
        down = RedisCache(make_client(f"redis://127.0.0.1:{closed_port()}/0", pool_size=2, timeout=0.2),
                          prefix="t:", timeout=0.2, retry_interval=0.05)
        with pytest.raises(CacheUnavailableError):
            await down.purge(KeySelector(""))
        await down.aclose()
        prefix = "llm-proxy-test-recover:"
        now = [0.0]
        cache = RedisCache(make_client(REDIS_URL, pool_size=2, timeout=0.5), prefix=prefix, timeout=0.5,
                           retry_interval=1.0, monotonic=lambda: now[0])
        cache._failed(OSError("simulated"))
        try:
            with pytest.raises(CacheUnavailableError):
                await cache.get("k")
            now[0] = 2.0
            assert await cache.set("k", entry(), 5)
            assert await cache.get("k") == entry()
        finally:
            await redis_client.delete(prefix + "k")
            await cache.aclose()
