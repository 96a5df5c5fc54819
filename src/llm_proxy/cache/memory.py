"""MemoryCache: entries in this worker process, an LRU bounded by the total size of its entries.

The size of an entry is its body, headers and key plus a fixed overhead, so the bound holds
for many small entries too. Expired entries are dropped when read, and count towards the bound
until then, which makes them the first to be evicted by recency in practice.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Self

from llm_proxy.cache import BackendStats, CachedResponse, Entry, EvictionHook, KeySelector
from llm_proxy.settings import CacheSettings, RedisSettings

ENTRY_OVERHEAD = 160
"""Bytes counted per entry beyond its key, headers and body (the objects holding them)."""


def entry_size(key: str, entry: Entry) -> int:
    if isinstance(entry, CachedResponse):
        headers = sum(len(name) + len(value) for name, value in entry.headers)
        return ENTRY_OVERHEAD + len(key) + len(entry.fingerprint) + headers + len(entry.body)
    return ENTRY_OVERHEAD + len(key) + sum(len(name) for name in entry.names)


class MemoryCache:
    backend = "in-memory"

    def __init__(self, max_bytes: int, *, on_evict: EvictionHook | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._now = now
        self._entries: OrderedDict[str, tuple[Entry, int]] = OrderedDict()
        self._bytes = 0
        self._evictions = 0

    @classmethod
    def from_settings(cls, settings: CacheSettings, redis: RedisSettings, *,
                      on_evict: EvictionHook | None, logger: logging.Logger) -> Self:
        return cls(settings.max_memory_bytes, on_evict=on_evict)

    async def get(self, key: str) -> Entry | None:
        item = self._entries.get(key)
        if item is None:
            return None
        entry = item[0]
        if entry.expires_at <= self._now():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def set(self, key: str, entry: Entry, ttl: float) -> bool:
        size = entry_size(key, entry)
        if ttl <= 0 or size > self.max_bytes:
            return False
        self._drop(key)
        while self._bytes + size > self.max_bytes:
            self._evict_oldest()
        self._entries[key] = (entry, size)
        self._bytes += size
        return True

    async def purge(self, selector: KeySelector) -> int:
        doomed = [key for key in self._entries if selector.matches(key)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def stats(self) -> BackendStats:
        return BackendStats(self.backend, available=True, entries=len(self._entries), bytes=self._bytes,
                            max_bytes=self.max_bytes, evictions=self._evictions, errors=0)

    async def aclose(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._bytes -= item[1]

    def _evict_oldest(self) -> None:
        key, (entry, size) = self._entries.popitem(last=False)
        self._bytes -= size
        if entry.expires_at <= self._now():
            return
        self._evictions += 1
        if self._on_evict is not None:
            self._on_evict(key, size)
