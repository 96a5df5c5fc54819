"""RedisCache: entries shared by every worker and instance, expired by Redis itself.

Each entry is one string, `SET <prefix><key> <msgpack> PX <ttl ms>`. Every call has a deadline
(`REDIS_CACHE_TIMEOUT`); a call that misses it or fails raises `CacheUnavailableError`, and for
the next `retry_interval` seconds calls fail at once without touching Redis, so a slow or dead
Redis turns into cache bypasses instead of slow requests. One probe after the interval decides
whether Redis is back. The state change is logged once each way.

Purges and stats walk the prefix with `SCAN MATCH ... COUNT REDIS_SCAN_COUNT` and delete with
`UNLINK`, one batch per SCAN page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Self, TypeVar, cast

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from llm_proxy.cache import (
    BackendStats,
    CachedResponse,
    CacheUnavailableError,
    Entry,
    EvictionHook,
    KeySelector,
    VaryIndex,
    glob_escape,
)
from llm_proxy.settings import CacheSettings, RedisSettings

T = TypeVar("T")
RETRY_INTERVAL = 1.0

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CachedResponse | VaryIndex)


def make_client(url: str, *, pool_size: int, timeout: float) -> Redis:
    """A client that fails fast: no retries, every socket operation bounded by `timeout`."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=pool_size, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
    )
    return Redis(connection_pool=pool)


class RedisCache:
    backend = "redis"

    def __init__(self, client: Redis, *, prefix: str, timeout: float, scan_count: int = 2048,
                 logger: logging.Logger | None = None, retry_interval: float = RETRY_INTERVAL,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.scan_count = scan_count
        self.retry_interval = retry_interval
        self._log = logger or logging.getLogger(__name__)
        self._monotonic = monotonic
        self._down_until = 0.0
        self._healthy = True
        self._errors = 0

    @classmethod
    def from_settings(cls, settings: CacheSettings, redis: RedisSettings, *,
                      on_evict: EvictionHook | None, logger: logging.Logger) -> Self:
        client = make_client(settings.redis_connection_url(redis), pool_size=settings.pool_size,
                             timeout=settings.timeout)
        return cls(client, prefix=settings.key_prefix, timeout=settings.timeout,
                   scan_count=settings.scan_count, logger=logger)

    async def get(self, key: str) -> Entry | None:
        raw = cast(bytes | None, await self._call(self.client.get(self.prefix + key)))
        if raw is None:
            return None
        try:
            entry: Entry = _decoder.decode(raw)
        except msgspec.DecodeError:
            self._log.warning("ignoring an undecodable cache entry under %r", self.prefix + key)
            return None
        return entry

    async def set(self, key: str, entry: Entry, ttl: float) -> bool:
        milliseconds = int(ttl * 1000)
        if milliseconds <= 0:
            return False
        await self._call(self.client.set(self.prefix + key, _encoder.encode(entry), px=milliseconds))
        return True

    async def purge(self, selector: KeySelector) -> int:
        deleted = 0
        async for keys in self._scan(selector.glob()):
            doomed = [k for k in keys if selector.matches(k[len(self.prefix):].decode("utf-8", "replace"))]
            if doomed:
                deleted += int(await self._call(self.client.unlink(*doomed)))
        return deleted

    async def stats(self) -> BackendStats:
        entries: int | None = 0
        try:
            async for keys in self._scan("*"):
                entries = (entries or 0) + len(keys)
        except CacheUnavailableError:
            entries = None
        return BackendStats(self.backend, available=entries is not None, entries=entries, bytes=None,
                            max_bytes=None, evictions=0, errors=self._errors)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    async def _scan(self, pattern: str) -> AsyncIterator[list[bytes]]:
        cursor: int = 0
        match = glob_escape(self.prefix) + pattern
        while True:
            cursor, keys = await self._call(self.client.scan(cursor, match=match, count=self.scan_count))
            if keys:
                yield cast(list[bytes], keys)
            if cursor == 0:
                return

    async def _call(self, operation: Awaitable[T]) -> T:
        if self._down_until > self._monotonic():
            if asyncio.iscoroutine(operation):
                operation.close()
            raise CacheUnavailableError("the Redis cache is unavailable; retrying shortly")
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise CacheUnavailableError(f"Redis cache: {type(exc).__name__}: {exc}") from exc
        if not self._healthy:
            self._healthy = True
            self._log.warning("the Redis cache answers again")
        return result

    def _failed(self, exc: BaseException) -> None:
        self._errors += 1
        self._down_until = self._monotonic() + self.retry_interval
        if self._healthy:
            self._healthy = False
            self._log.warning("the Redis cache is unavailable (%s: %s); requests bypass the cache",
                              type(exc).__name__, exc)

