"""Frozen records shared by storage, tokens, management and the proxy.

These are plain data: no I/O, no imports from the rest of the package.
Timestamps are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


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
