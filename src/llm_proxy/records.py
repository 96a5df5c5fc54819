"""Frozen records shared by storage, tokens, management and the proxy.

These are plain data: no I/O, no imports from the rest of the package.
Timestamps are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

BUDGET_PERIODS = ("daily", "weekly", "monthly", "total")
"""How spend is counted against `max_budget` and `cost_alert_threshold` (UTC calendar periods)."""


@dataclass(frozen=True, slots=True)
class SpendLimits:
    """A project's or token's spend settings, in USD; None means none."""

    cost_alert_threshold: float | None = None
    max_budget: float | None = None
    budget_period: str = "monthly"

    @property
    def watched(self) -> bool:
        return self.cost_alert_threshold is not None or self.max_budget is not None


NO_LIMITS = SpendLimits()


@dataclass(frozen=True, slots=True)
class SpendScope:
    """Whose spend: kind `project` or `token`, and that record's id."""

    kind: str
    id: str


@dataclass(frozen=True, slots=True)
class SpendAmount:
    """Spend in USD, and the largest single call in it."""

    usd: float = 0.0
    max_call: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A worker asking for more of a scope's budget for the period starting at `period_start`."""

    scope: SpendScope
    worker_id: str
    period_start: datetime
    budget: float
    need: float
    """The least that is useful; less than this is granted only with `take_rest`."""
    workers: int
    """Live workers: the grant is `need` or 1/(2·workers) of what is free, whichever is larger."""
    now: datetime
    expires: datetime
    take_rest: bool = False


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A budget lease request's outcome, all for the scope's current period, in USD."""

    spent: float
    """Recorded spend."""
    others: float
    """Unexpired leases of the other workers."""
    held: float
    """This worker's lease now (what it held, plus what was granted)."""


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    api_key: str
    """The upstream provider key, decrypted. Never rendered unobfuscated after creation."""
    is_active: bool
    created_at: datetime
    updated_at: datetime
    deactivated_at: datetime | None = None
    cost_alert_threshold: float | None = None
    max_budget: float | None = None
    budget_period: str = "monthly"

    @property
    def limits(self) -> SpendLimits:
        return SpendLimits(self.cost_alert_threshold, self.max_budget, self.budget_period)


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    token_hash: str
    """Lowercase hex SHA-256 of the secret `sk-...` string; the secret itself is never stored."""
    token_hint: str
    """Obfuscated form of the secret (`sk-abcd**************wxyz`), safe to show."""
    project_id: str
    expires_at: datetime | None
    is_active: bool
    request_count: int
    max_requests: int | None
    cache_hit_count: int
    created_at: datetime
    last_used_at: datetime | None = None
    deactivated_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    cost_alert_threshold: float | None = None
    max_budget: float | None = None
    budget_period: str = "monthly"

    @property
    def limits(self) -> SpendLimits:
        return SpendLimits(self.cost_alert_threshold, self.max_budget, self.budget_period)


class QuotaOutcome(enum.Enum):
    """Result of atomically consuming one request from a token's lifetime quota."""

    OK = "ok"
    NOT_FOUND = "not_found"
    INACTIVE = "inactive"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """Counter increments for one token, accumulated off the request path."""

    requests: int = 0
    cache_hits: int = 0
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    timestamp: datetime
    action: str
    actor: str
    outcome: str
    """One of success, failure, denied, error."""
    project_id: str | None = None
    request_id: str | None = None
    correlation_id: str | None = None
    client_ip: str | None = None
    method: str | None = None
    path: str | None = None
    user_agent: str | None = None
    reason: str | None = None
    token_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of `GET /manage/audit`; all optional, combined with AND."""

    action: str | None = None
    actor: str | None = None
    outcome: str | None = None
    project_id: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    correlation_id: str | None = None
    method: str | None = None
    path: str | None = None
    search: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
