"""SqlSpendStore: daily spend rows per project and token, each written with one upsert.

The upsert (`INSERT ... ON CONFLICT DO UPDATE` on PostgreSQL and SQLite, `INSERT ... ON
DUPLICATE KEY UPDATE` on MySQL/MariaDB) adds to the stored value inside the database, so
concurrent writers from any number of workers and instances never lose an increment. Rows of one
batch are written in key order, so two batches lock shared rows in the same order and cannot
deadlock each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_proxy.clock import Clock, SystemClock
from llm_proxy.errors import DuplicateError, StorageError
from llm_proxy.records import LeaseGrant, LeaseRequest, SpendAmount, SpendScope
from llm_proxy.storage.errormap import translate_errors
from llm_proxy.storage.tables import spend, spend_alerts, spend_leases, spend_workers

IN_CHUNK = 500
LOCK_ROW = ""
"""`worker_id` of the row every lease grant of a scope updates first, to run one at a time."""
GRANT_ATTEMPTS = 2
"""MySQL may resolve two first grants of a scope as a deadlock; the second attempt then succeeds."""


class SqlSpendStore:
    def __init__(self, engine: AsyncEngine, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()
        self._add = _upsert(engine.dialect.name, spend, _added)
        self._announce = _upsert(engine.dialect.name, spend_workers, lambda new: {"seen_at": new.seen_at})
        self._lease = _upsert(engine.dialect.name, spend_leases, lambda new: {
            "period_start": new.period_start, "reserved_usd": new.reserved_usd, "expires_at": new.expires_at})

    async def add(self, amounts: Mapping[tuple[SpendScope, datetime], SpendAmount]) -> None:
        if not amounts:
            return
        now = self._clock.now()
        rows = [
            {"scope_kind": scope.kind, "scope_id": scope.id, "day": day, "spent_usd": amount.usd,
             "max_call_usd": amount.max_call, "updated_at": now}
            for (scope, day), amount in sorted(amounts.items(), key=_row_order)
        ]
        async with translate_errors("record spend"), self._engine.begin() as conn:
            await conn.execute(self._add, rows)

    async def totals(self, since: Mapping[SpendScope, datetime]) -> dict[SpendScope, SpendAmount]:
        groups: dict[tuple[str, datetime], list[str]] = {}
        for scope, start in since.items():
            groups.setdefault((scope.kind, start), []).append(scope.id)
        found: dict[SpendScope, SpendAmount] = {}
        async with translate_errors("read spend"), self._engine.connect() as conn:
            for (kind, start), ids in groups.items():
                for chunk in _chunks(ids):
                    rows = await conn.execute(_sum_query(kind, start, chunk))
                    for scope_id, usd, max_call in rows:
                        found[SpendScope(kind, scope_id)] = SpendAmount(float(usd or 0.0), float(max_call or 0.0))
        return found

    async def claim_alert(self, scope: SpendScope, period: str, period_start: datetime, *,
                          threshold: float, spent: float, at: datetime) -> bool:
        row = {"scope_kind": scope.kind, "scope_id": scope.id, "period": period, "period_start": period_start,
               "threshold_usd": threshold, "spent_usd": spent, "alerted_at": at}
        try:
            async with translate_errors("record spend alert"), self._engine.begin() as conn:
                await conn.execute(spend_alerts.insert().values(row))
        except DuplicateError:
            return False
        return True


    async def heartbeat(self, worker_id: str, at: datetime, *, live_since: datetime,
                        forget_before: datetime) -> int:
        """Announce a live worker; forget long-silent ones; return how many were seen since `live_since`."""
        live = sa.select(sa.func.count()).select_from(spend_workers).where(spend_workers.c.seen_at >= live_since)
        async with translate_errors("announce worker"), self._engine.begin() as conn:
            await conn.execute(self._announce, [{"worker_id": worker_id, "seen_at": at}])
            await conn.execute(spend_workers.delete().where(spend_workers.c.seen_at < forget_before))
            await conn.execute(spend_leases.delete().where(spend_leases.c.expires_at < forget_before))
            return int((await conn.execute(live)).scalar_one())

    async def grant_lease(self, request: LeaseRequest) -> LeaseGrant:
        attempts = 1
        while True:
            try:
                return await self._grant(request)
            except StorageError:
                if attempts >= GRANT_ATTEMPTS:
                    raise
                attempts += 1

    async def _grant(self, request: LeaseRequest) -> LeaseGrant:
        scope, worker_id, now = request.scope, request.worker_id, request.now
        row = {"scope_kind": scope.kind, "scope_id": scope.id, "period_start": request.period_start}
        async with translate_errors("grant budget lease"), self._engine.begin() as conn:
            await conn.execute(self._lease, [{**row, "worker_id": LOCK_ROW, "reserved_usd": 0.0, "expires_at": now}])
            state = await conn.execute(_lease_state(scope, worker_id, request.period_start, now))
            spent, others, mine = state.one()
            granted = _grantable(request.budget - spent - others - mine, request)
            if granted > 0:
                await conn.execute(self._lease, [{**row, "worker_id": worker_id, "reserved_usd": mine + granted,
                                                  "expires_at": request.expires}])
        return LeaseGrant(float(spent), float(others), float(mine + granted))

    async def set_leases(self, worker_id: str, leases: Mapping[SpendScope, tuple[datetime, float]],
                         expires: datetime) -> None:
        if not leases:
            return
        rows = [{"scope_kind": scope.kind, "scope_id": scope.id, "worker_id": worker_id, "period_start": start,
                 "reserved_usd": usd, "expires_at": expires}
                for scope, (start, usd) in sorted(leases.items(), key=lambda item: (item[0].kind, item[0].id))]
        async with translate_errors("renew budget leases"), self._engine.begin() as conn:
            await conn.execute(self._lease, rows)


def _row_order(item: tuple[tuple[SpendScope, datetime], SpendAmount]) -> tuple[str, str, datetime]:
    (scope, day), _ = item
    return scope.kind, scope.id, day


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start:start + IN_CHUNK]


def _sum_query(kind: str, start: datetime, ids: Sequence[str]) -> sa.Select[Any]:
    return (
        sa.select(spend.c.scope_id, sa.func.sum(spend.c.spent_usd), sa.func.max(spend.c.max_call_usd))
        .where(spend.c.scope_kind == kind, spend.c.scope_id.in_(ids), spend.c.day >= start)
        .group_by(spend.c.scope_id)
    )


def _grantable(free: float, request: LeaseRequest) -> float:
    need = request.need
    if need > 0 and free >= need:
        return min(free, max(need, free / (2 * max(1, request.workers))))
    return free if request.take_rest and free > 0 else 0.0


def _leases_of(kind: str, start: datetime, now: datetime) -> list[sa.ColumnElement[bool]]:
    c = spend_leases.c
    return [c.scope_kind == kind, c.period_start == start, c.expires_at > now, c.worker_id != LOCK_ROW]


def _lease_state(scope: SpendScope, worker_id: str, start: datetime, now: datetime) -> sa.Select[Any]:
    """(spent, other workers' leases, this worker's lease) of the period, read in one statement."""
    c = spend_leases.c
    spent = sa.select(sa.func.coalesce(sa.func.sum(spend.c.spent_usd), 0.0)).where(
        spend.c.scope_kind == scope.kind, spend.c.scope_id == scope.id, spend.c.day >= start)
    leased = [*_leases_of(scope.kind, start, now), c.scope_id == scope.id]
    others = sa.select(sa.func.coalesce(sa.func.sum(c.reserved_usd), 0.0)).where(*leased, c.worker_id != worker_id)
    mine = sa.select(sa.func.coalesce(sa.func.sum(c.reserved_usd), 0.0)).where(*leased, c.worker_id == worker_id)
    return sa.select(spent.scalar_subquery(), others.scalar_subquery(), mine.scalar_subquery())


def _larger(current: sa.ColumnElement[float], new: sa.ColumnElement[float]) -> sa.ColumnElement[float]:
    """GREATEST is not portable (SQLite has none)."""
    return sa.case((new > current, new), else_=current)


def _added(new: Any) -> dict[str, Any]:
    """The spend row after adding the inserted values (`new`) to it."""
    return {"spent_usd": spend.c.spent_usd + new.spent_usd,
            "max_call_usd": _larger(spend.c.max_call_usd, new.max_call_usd),
            "updated_at": new.updated_at}


def _upsert(dialect: str, table: sa.Table, update: Callable[[Any], dict[str, Any]]) -> sa.Executable:
    """Insert, or on a primary-key clash apply `update(values that were to be inserted)`."""
    if dialect in {"mysql", "mariadb"}:
        mysql_insert = mysql.insert(table)
        return mysql_insert.on_duplicate_key_update(**update(mysql_insert.inserted))
    if dialect not in {"postgresql", "sqlite"}:
        raise ValueError(f"no upsert for the {dialect} dialect")
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    return insert.on_conflict_do_update(index_elements=list(table.primary_key.columns),
                                        set_=update(insert.excluded))
