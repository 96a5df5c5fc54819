"""SqlAuditStore: append audit entries and query them with filters, search and paging."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_proxy.records import AuditEntry, AuditQuery
from llm_proxy.storage.errormap import translate_errors
from llm_proxy.storage.expressions import utc
from llm_proxy.storage.tables import audit_events

EXACT_FILTERS = (
    "action", "actor", "outcome", "project_id", "client_ip", "request_id", "correlation_id",
    "method", "path",
)
SEARCHED_COLUMNS = (
    "request_id", "correlation_id", "client_ip", "action", "actor", "method", "path", "reason",
    "meta",
)
_columns = audit_events.c


class SqlAuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(self, entry: AuditEntry) -> None:
        async with translate_errors("store audit event"), self._engine.begin() as conn:
            await conn.execute(audit_events.insert().values(_row(entry)))

    async def get(self, entry_id: str) -> AuditEntry | None:
        query = sa.select(audit_events).where(_columns.id == entry_id)
        async with translate_errors("read audit event"), self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _entry(row) if row is not None else None

    async def query(
        self, filters: AuditQuery, *, page: int, page_size: int
    ) -> tuple[list[AuditEntry], int]:
        conditions = _conditions(filters)
        listing = (
            sa.select(audit_events).where(*conditions)
            .order_by(_columns.timestamp.desc(), _columns.id.desc())
            .limit(page_size).offset(max(page - 1, 0) * page_size)
        )
        counting = sa.select(sa.func.count()).select_from(audit_events).where(*conditions)
        async with translate_errors("query audit events"), self._engine.connect() as conn:
            total = int((await conn.execute(counting)).scalar_one())
            rows = (await conn.execute(listing)).mappings().all()
        return [_entry(row) for row in rows], total


def _conditions(filters: AuditQuery) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = [
        _columns[name] == value
        for name in EXACT_FILTERS
        if (value := getattr(filters, name)) is not None
    ]
    if filters.search:
        conditions.append(sa.or_(*(
            _columns[name].icontains(filters.search, autoescape=True) for name in SEARCHED_COLUMNS
        )))
    if filters.start_time is not None:
        conditions.append(_columns.timestamp >= utc(filters.start_time))
    if filters.end_time is not None:
        conditions.append(_columns.timestamp <= utc(filters.end_time))
    return conditions


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id, "timestamp": entry.timestamp, "action": entry.action, "actor": entry.actor,
        "project_id": entry.project_id, "request_id": entry.request_id,
        "correlation_id": entry.correlation_id, "client_ip": entry.client_ip,
        "method": entry.method, "path": entry.path, "user_agent": entry.user_agent,
        "outcome": entry.outcome, "reason": entry.reason, "token_id": entry.token_id,
        "meta": orjson.dumps(entry.details).decode() if entry.details else None,
    }


def _entry(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        timestamp=row["timestamp"],
        action=row["action"],
        actor=row["actor"],
        outcome=row["outcome"],
        project_id=row["project_id"],
        request_id=row["request_id"],
        correlation_id=row["correlation_id"],
        client_ip=row["client_ip"],
        method=row["method"],
        path=row["path"],
        user_agent=row["user_agent"],
        reason=row["reason"],
        token_id=row["token_id"],
        details=orjson.loads(row["meta"]) if row["meta"] else {},
    )
