"""Bearer token → Grant, with a small per-worker validation cache in front of the database.

Cache policy:
- A validated token and its project's active flag are trusted for `ttl` seconds; after that the
  row is read again, so revocations made by other workers or instances apply within `ttl`.
- The management API of this process calls `forget_token` / `forget_project` after every change,
  so revocation and deactivation apply at once here (the predecessor kept revoked unlimited
  tokens working for up to 5 minutes).
- Limited tokens (`max_requests`) always consume their quota with one atomic UPDATE, so the
  limit holds across workers and instances; unlimited ones are counted by the batched
  `UsageCounter`.
- A database failure is a 503 `service_unavailable`, never a 401.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from llm_proxy import errors
from llm_proxy.clock import Clock
from llm_proxy.errors import StorageError
from llm_proxy.records import NO_LIMITS, QuotaOutcome, SpendLimits, Token
from llm_proxy.storage import Storage
from llm_proxy.tokens.format import format_problem, hash_token

V = TypeVar("V")


class UsageRecorder(Protocol):
    def record_request(self, token_id: str, at: datetime) -> None: ...

    def record_cache_hit(self, token_id: str, at: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class Grant:
    token: Token
    project_active: bool
    expires_ts: float | None
    """expires_at as a Unix timestamp, precomputed so the hot path compares floats."""
    cached_until: float
    project_limits: SpendLimits = NO_LIMITS
    """The project's budget and alert settings, cached with the grant."""
    token_limits: SpendLimits = NO_LIMITS
    """The token's, likewise."""

    @property
    def project_id(self) -> str:
        return self.token.project_id

    @property
    def metadata(self) -> dict[str, Any]:
        return self.token.metadata


class Authenticator:
    def __init__(self, storage: Storage, usage: UsageRecorder, clock: Clock, *, ttl: float,
                 max_entries: int, enforce_project_active: bool, key_ttl: float, key_max: int) -> None:
        self._storage = storage
        self._usage = usage
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._enforce_active = enforce_project_active
        self._grants: OrderedDict[str, Grant] = OrderedDict()
        self._keys = _TtlCache[str](key_ttl, key_max)

    async def authenticate(self, authorization: str | None, *, count: bool = True) -> Grant:
        """Validate the bearer token; with `count`, charge one request to it."""
        token = _bearer(authorization)
        grant = await self._grant(hash_token(token))
        now = time.time()
        if not grant.token.is_active:
            raise errors.token_inactive()
        if grant.expires_ts is not None and now >= grant.expires_ts:
            raise errors.token_expired()
        if self._enforce_active and not grant.project_active:
            raise errors.project_inactive()
        if count:
            await self._charge(grant)
        return grant

    async def upstream_key(self, project_id: str) -> str:
        key = self._keys.get(project_id)
        if key is not None:
            return key
        try:
            project = await self._storage.projects.get(project_id)
        except StorageError as exc:
            raise errors.upstream_auth_error() from exc
        if project is None or not project.api_key:
            raise errors.upstream_auth_error()
        self._keys.put(project_id, project.api_key)
        return project.api_key

    def record_cache_hit(self, grant: Grant) -> None:
        self._usage.record_cache_hit(grant.token.id, self._clock.now())

    def forget_token(self, token_id: str) -> None:
        for key in [k for k, g in self._grants.items() if g.token.id == token_id]:
            del self._grants[key]

    def forget_project(self, project_id: str) -> None:
        for key in [k for k, g in self._grants.items() if g.token.project_id == project_id]:
            del self._grants[key]
        self._keys.pop(project_id)

    async def _grant(self, token_hash: str) -> Grant:
        grant = self._grants.get(token_hash)
        if grant is not None and grant.cached_until > time.monotonic():
            return grant
        try:
            token = await self._storage.tokens.get_by_hash(token_hash)
            if token is None:
                self._grants.pop(token_hash, None)
                raise errors.token_not_found()
            project = await self._storage.projects.get(token.project_id)
        except StorageError as exc:
            raise errors.service_unavailable() from exc
        grant = Grant(
            token=token,
            project_active=project is not None and project.is_active,
            expires_ts=token.expires_at.timestamp() if token.expires_at else None,
            cached_until=time.monotonic() + self._ttl,
            project_limits=project.limits if project is not None else NO_LIMITS,
            token_limits=token.limits,
        )
        if self._max > 0 and self._ttl > 0:
            self._grants[token_hash] = grant
            self._grants.move_to_end(token_hash)
            while len(self._grants) > self._max:
                self._grants.popitem(last=False)
        return grant

    async def _charge(self, grant: Grant) -> None:
        token = grant.token
        now = self._clock.now()
        if token.max_requests is None:
            self._usage.record_request(token.id, now)
            return
        try:
            outcome = await self._storage.tokens.consume_quota(token.id, now)
        except StorageError as exc:
            raise errors.service_unavailable() from exc
        if outcome is QuotaOutcome.OK:
            return
        self.forget_token(token.id)
        raise _QUOTA_ERRORS[outcome]()


_QUOTA_ERRORS = {
    QuotaOutcome.NOT_FOUND: errors.token_not_found,
    QuotaOutcome.INACTIVE: errors.token_inactive,
    QuotaOutcome.EXPIRED: errors.token_expired,
    QuotaOutcome.EXHAUSTED: errors.quota_exceeded,
}


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise errors.invalid_token("missing Authorization header")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise errors.invalid_token("expected 'Authorization: Bearer <token>'")
    token = value.strip()
    problem = format_problem(token)
    if problem is not None:
        raise errors.invalid_token(f"malformed token ({problem})")
    return token


class _TtlCache(Generic[V]):
    """A bounded LRU whose entries expire; disabled when ttl or size is 0."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> V | None:
        item = self._data.get(key)
        if item is None or item[0] <= time.monotonic():
            return None
        return item[1]

    def put(self, key: str, value: V) -> None:
        if self._ttl <= 0 or self._max <= 0:
            return
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: str) -> None:
        self._data.pop(key, None)
