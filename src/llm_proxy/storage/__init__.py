"""Storage: the system of record (projects, tokens, audit events) on SQLite, PostgreSQL or MySQL.

The stores below are the only way the rest of the package touches the database. Every method
raises `llm_proxy.errors.StorageError` when the database cannot answer (callers on the proxy
path turn that into 503), `DuplicateError` on a unique-constraint violation, and returns `None`
/ `False` for "not found". Writes are single atomic statements where a race matters (quota
consumption, counter increments, revocation): no read-modify-write of counters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from llm_proxy.records import (
    NO_LIMITS,
    AuditEntry,
    AuditQuery,
    LeaseGrant,
    LeaseRequest,
    Project,
    QuotaOutcome,
    SpendAmount,
    SpendLimits,
    SpendScope,
    Token,
    UsageDelta,
)


class Unset:
    """Marker for "field not given" in partial updates (None is a meaningful value)."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


@dataclass(frozen=True, slots=True)
class RevokeResult:
    revoked: int
    already_revoked: int
    total: int


@dataclass(frozen=True, slots=True)
class LimitsUpdate:
    """A partial change of spend settings: UNSET fields are kept, None clears an amount."""

    cost_alert_threshold: float | Unset | None = UNSET
    max_budget: float | Unset | None = UNSET
    budget_period: str | Unset = UNSET

    def values(self) -> dict[str, Any]:
        given = {"cost_alert_threshold": self.cost_alert_threshold, "max_budget": self.max_budget,
                 "budget_period": self.budget_period}
        return {name: value for name, value in given.items() if not isinstance(value, Unset)}


NO_CHANGE = LimitsUpdate()


class ProjectStore(Protocol):
    async def create(self, name: str, api_key: str, *, limits: SpendLimits = NO_LIMITS) -> Project:
        """Insert an active project with a new UUIDv4 id; DuplicateError if the name is taken."""
        ...

    async def get(self, project_id: str) -> Project | None: ...

    async def list(self, *, active_only: bool = False, limit: int = 100, offset: int = 0) -> list[Project]:
        """Ordered by name."""
        ...

    async def count(self, *, active_only: bool = False) -> int: ...

    async def update(
        self,
        project_id: str,
        *,
        name: str | Unset = UNSET,
        api_key: str | Unset = UNSET,
        is_active: bool | Unset = UNSET,
        limits: LimitsUpdate = NO_CHANGE,
    ) -> Project | None:
        """Apply the given fields; true→false sets deactivated_at, false→true clears it.

        Always bumps updated_at. None when the project does not exist.
        """
        ...


class TokenStore(Protocol):
    async def create(
        self,
        *,
        project_id: str,
        token_hash: str,
        token_hint: str,
        expires_at: datetime | None,
        max_requests: int | None,
        metadata: Mapping[str, Any],
        limits: SpendLimits = NO_LIMITS,
    ) -> Token: ...

    async def get(self, token_id: str) -> Token | None: ...

    async def get_by_hash(self, token_hash: str) -> Token | None: ...

    async def list(
        self, *, project_id: str | None = None, active_only: bool = False, limit: int = 100, offset: int = 0
    ) -> list[Token]:
        """Newest first. active_only: is_active and not expired."""
        ...

    async def count(self, *, project_id: str | None = None, active_only: bool = False) -> int: ...

    async def update(
        self,
        token_id: str,
        *,
        is_active: bool | Unset = UNSET,
        max_requests: int | Unset | None = UNSET,
        metadata: Mapping[str, Any] | Unset = UNSET,
        expires_at: datetime | Unset | None = UNSET,
        limits: LimitsUpdate = NO_CHANGE,
    ) -> Token | None:
        """Update only the given columns (never counters); is_active false sets deactivated_at."""
        ...

    async def revoke(self, token_id: str) -> bool | None:
        """Deactivate; True if it was active, False if already inactive, None if unknown."""
        ...

    async def revoke_project(self, project_id: str) -> RevokeResult:
        """Deactivate every token of a project in one statement."""
        ...

    async def consume_quota(self, token_id: str, now: datetime) -> QuotaOutcome:
        """Atomically count one request against a limited token.

        One conditional UPDATE (active, not expired, request_count < max_requests); on zero rows a
        read says why. Never lets more than max_requests succeed, however many run at once.
        """
        ...

    async def apply_usage(self, deltas: Mapping[str, UsageDelta]) -> None:
        """Add batched counters in one transaction; unknown token ids are skipped."""
        ...


class AuditStore(Protocol):
    async def append(self, entry: AuditEntry) -> None: ...

    async def get(self, entry_id: str) -> AuditEntry | None: ...

    async def query(self, filters: AuditQuery, *, page: int, page_size: int) -> tuple[list[AuditEntry], int]:
        """Newest first; returns the page and the total count matching the filters."""
        ...


class SpendStore(Protocol):
    """Spend per project and token in daily (UTC) rows; a period's spend is the sum of its days."""

    async def add(self, amounts: Mapping[tuple[SpendScope, datetime], SpendAmount]) -> None:
        """Add each amount to its (scope, day) row, creating it if missing, in one transaction.

        `usd` is added atomically (`spent = spent + x`, an upsert on every dialect); `max_call`
        keeps the larger value. Concurrent writers never lose an increment.
        """
        ...

    async def totals(self, since: Mapping[SpendScope, datetime]) -> dict[SpendScope, SpendAmount]:
        """Each scope's spend from its day `since` on; scopes without spend are absent."""
        ...

    async def claim_alert(self, scope: SpendScope, period: str, period_start: datetime, *,
                          threshold: float, spent: float, at: datetime) -> bool:
        """Record that the threshold alert of this period was sent; True only for the first caller."""
        ...

    async def heartbeat(self, worker_id: str, at: datetime, *, live_since: datetime,
                        forget_before: datetime) -> int:
        """Announce a live proxy worker; return the number of workers seen since `live_since`."""
        ...

    async def grant_lease(self, request: LeaseRequest) -> LeaseGrant:
        """Lease a worker more of a scope's budget, one grant of the scope at a time.

        Grants the larger of `need` and a fair part of what is free (1/(2·workers)); when less
        than `need` is free, nothing, or with `take_rest` all that is free. So recorded spend
        plus all unexpired leases never exceed `budget`.
        """
        ...

    async def set_leases(self, worker_id: str, leases: Mapping[SpendScope, tuple[datetime, float]],
                         expires: datetime) -> None:
        """Set this worker's leases (period start, USD) and their expiry; only ever to less than granted."""
        ...


class Storage(Protocol):
    @property
    def projects(self) -> ProjectStore: ...

    @property
    def tokens(self) -> TokenStore: ...

    @property
    def audit(self) -> AuditStore: ...

    @property
    def spend(self) -> SpendStore: ...

    async def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        ...

    async def migration_status(self) -> tuple[str | None, str | None]:
        """(current revision, head revision)."""
        ...

    async def aclose(self) -> None: ...


__all__ = [
    "NO_CHANGE",
    "UNSET",
    "AuditStore",
    "LimitsUpdate",
    "ProjectStore",
    "RevokeResult",
    "Sequence",
    "SpendStore",
    "Storage",
    "TokenStore",
    "Unset",
]
