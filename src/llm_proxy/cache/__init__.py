"""The HTTP response cache: where stored upstream responses live.

Backends are sibling modules named in `CACHES` and built by `build_cache`:

    in-memory / memory   cache/memory.py   one worker process; LRU bounded by total bytes
    redis                cache/redis.py    shared by every worker and instance; Redis expiry

What may be stored, for how long and under which key is decided by the pure functions of
`cache/policy.py`; the proxy side (lookup, serving hits, storing responses) is
`proxy/caching.py`. A backend only keeps entries under keys until they expire.

Keys are readable, `<project id>:<path>:<METHOD>:<query digest>.<body digest>.<header digest>`,
plus `~<vary digest>` for one variant of a response that carries `Vary`; the base key then
holds a `VaryIndex` naming the varying request headers. The header digest covers `Accept`,
`Accept-Encoding` and `OpenAI-Beta/-Organization/-Project`, which change an upstream answer
whether or not it says `Vary`. The project id comes first, so one
project's entries can never be found through another project's key, and purges select keys
by prefix (`KeySelector`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from llm_proxy.errors import ConfigError
from llm_proxy.settings import CacheSettings, RedisSettings

CACHES: dict[str, str] = {
    "in-memory": "llm_proxy.cache.memory:MemoryCache",
    "memory": "llm_proxy.cache.memory:MemoryCache",
    "redis": "llm_proxy.cache.redis:RedisCache",
}

EvictionHook = Callable[[str, int], None]
"""Called with (key, size in bytes) when a backend drops a live entry to make room."""
CacheObserver = Callable[[str, Mapping[str, float], Mapping[str, Any]], None]
"""A telemetry hook, `(event name, measurements, metadata)`: `llm_proxy.cache.hit`, `.miss`,
`.put` and `.evicted`. Called synchronously on the request path; it must not raise or block."""


@dataclass(slots=True)
class CacheCounters:
    """What the cache did in this worker process since it started."""

    hits: int = 0
    """Requests answered from the cache, conditional hits (304) included."""
    conditional_hits: int = 0
    misses: int = 0
    """Requests that took part but went upstream: nothing stored, a vary miss, or revalidation."""
    bypasses: int = 0
    """Requests that went upstream without the cache: `no-store`, or the backend unavailable."""
    stores: int = 0


class CacheUnavailableError(Exception):
    """The backend could not answer in time; callers bypass the cache for this request."""


class CachedResponse(msgspec.Struct, frozen=True, array_like=True, tag=1):
    """One stored response. `fingerprint` is the full digest of everything the key abbreviates,
    checked on every hit, so a digest collision can only ever be a miss."""

    fingerprint: str
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float
    """Unix time the response was generated (arrival minus the upstream's `Age`)."""
    expires_at: float
    """Unix time after which the entry is never served."""


class VaryIndex(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """Stored at a base key whose response carries `Vary`: the variants live at `key~digest`."""

    names: tuple[str, ...]
    expires_at: float


Entry = CachedResponse | VaryIndex


def glob_escape(text: str) -> str:
    """`text` as a literal inside a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True, slots=True)
class KeySelector:
    """The keys a purge deletes: those starting with `prefix`.

    With `any_project=True` the prefix applies to what follows the project id (`<project id>:`),
    so one selector can name a path or a request in every project.
    """

    prefix: str = ""
    any_project: bool = False

    def matches(self, key: str) -> bool:
        if self.any_project:
            _, sep, rest = key.partition(":")
            return bool(sep) and rest.startswith(self.prefix)
        return key.startswith(self.prefix)

    def glob(self) -> str:
        """The same selection as a Redis `MATCH` pattern (a superset; confirm with `matches`)."""
        return ("*:" if self.any_project else "") + glob_escape(self.prefix) + "*"


@dataclass(frozen=True, slots=True)
class BackendStats:
    backend: str
    available: bool
    entries: int | None
    """None when the backend cannot count cheaply."""
    bytes: int | None
    max_bytes: int | None
    evictions: int
    errors: int


class ResponseCache(Protocol):
    """A store of entries under keys, each with its own lifetime.

    - `get` returns the live entry under `key`, or None when there is none or it has expired.
    - `set` stores `entry` for `ttl` seconds (replacing any entry under that key) and returns
      whether it was kept: a non-positive ttl or an entry too large for the backend is not.
    - `purge` deletes every key the selector matches and returns how many it deleted.
    - All four raise `CacheUnavailableError` when the backend cannot answer within its deadline;
      they never raise anything else for backend trouble.
    - `aclose` releases connections; the cache is not used afterwards.
    """

    async def get(self, key: str) -> Entry | None: ...

    async def set(self, key: str, entry: Entry, ttl: float) -> bool: ...

    async def purge(self, selector: KeySelector) -> int: ...

    async def stats(self) -> BackendStats: ...

    async def aclose(self) -> None: ...


class CacheFactory(Protocol):
    def from_settings(self, settings: CacheSettings, redis: RedisSettings, *,
                      on_evict: EvictionHook | None, logger: logging.Logger) -> ResponseCache: ...


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_cache(settings: CacheSettings, redis: RedisSettings, *, observer: CacheObserver | None = None,
                logger: logging.Logger | None = None) -> ResponseCache:
    """The backend named by `HTTP_CACHE_BACKEND`; evictions are reported to `observer`."""
    name = settings.backend
    if name not in CACHES:
        raise ConfigError([f"HTTP_CACHE_BACKEND: unknown cache {name!r}; valid: {', '.join(CACHES)}"])
    factory: CacheFactory = _import(CACHES[name])
    on_evict = _eviction_reporter(observer, name) if observer is not None else None
    return factory.from_settings(settings, redis, on_evict=on_evict,
                                 logger=logger or logging.getLogger("llm_proxy.cache"))


def _eviction_reporter(observer: CacheObserver, backend: str) -> EvictionHook:
    def evicted(key: str, size: int) -> None:
        observer("llm_proxy.cache.evicted", {"count": 1.0, "bytes": float(size)}, {"backend": backend, "key": key})

    return evicted
