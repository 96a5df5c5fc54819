"""SqlTokenStore: tokens, their quota and usage counters; every counter write is one statement."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_proxy.clock import Clock, SystemClock, new_id
from llm_proxy.records import NO_LIMITS, QuotaOutcome, SpendLimits, Token, UsageDelta
from llm_proxy.storage import NO_CHANGE, UNSET, LimitsUpdate, RevokeResult, Unset
from llm_proxy.storage.errormap import translate_errors
from llm_proxy.storage.expressions import deactivation, latest, utc
from llm_proxy.storage.tables import UTCDateTime, tokens

_active = tokens.c.is_active == sa.true()


class SqlTokenStore:
    def __init__(self, engine: AsyncEngine, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()

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
    ) -> Token:
        token = Token(
            id=new_id(), token_hash=token_hash, token_hint=token_hint, project_id=project_id,
            expires_at=expires_at, is_active=True, request_count=0, max_requests=max_requests,
            cache_hit_count=0, created_at=self._clock.now(), metadata=dict(metadata),
            cost_alert_threshold=limits.cost_alert_threshold, max_budget=limits.max_budget,
            budget_period=limits.budget_period,
        )
        async with translate_errors("create token"), self._engine.begin() as conn:
            await conn.execute(tokens.insert().values(_row(token)))
        return token

    async def get(self, token_id: str) -> Token | None:
        return await self._one("read token", tokens.c.id == token_id)

    async def get_by_hash(self, token_hash: str) -> Token | None:
        return await self._one("look up token", tokens.c.token_hash == token_hash)

    async def list(
        self, *, project_id: str | None = None, active_only: bool = False, limit: int = 100,
        offset: int = 0,
    ) -> list[Token]:
        query = (
            sa.select(tokens).where(*_filters(project_id, active_only, self._clock.now()))
            .order_by(tokens.c.created_at.desc(), tokens.c.id.desc()).limit(limit).offset(offset)
        )
        async with translate_errors("list tokens"), self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_token(row) for row in rows]

    async def count(self, *, project_id: str | None = None, active_only: bool = False) -> int:
        query = sa.select(sa.func.count()).select_from(tokens)
        query = query.where(*_filters(project_id, active_only, self._clock.now()))
        async with translate_errors("count tokens"), self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

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
        values: dict[str, Any] = limits.values()
        if not isinstance(is_active, Unset):
            values["is_active"] = is_active
            values["deactivated_at"] = deactivation(
                tokens.c.deactivated_at, is_active, self._clock.now()
            )
        if not isinstance(max_requests, Unset):
            values["max_requests"] = max_requests
        if not isinstance(metadata, Unset):
            values["meta"] = dict(metadata)
        if not isinstance(expires_at, Unset):
            values["expires_at"] = expires_at
        where = tokens.c.id == token_id
        async with translate_errors("update token"), self._engine.begin() as conn:
            if values:
                await conn.execute(tokens.update().where(where).values(values))
            row = (await conn.execute(sa.select(tokens).where(where))).mappings().first()
        return _token(row) if row is not None else None

    async def revoke(self, token_id: str) -> bool | None:
        statement = _deactivate(tokens.c.id == token_id, self._clock.now())
        async with translate_errors("revoke token"), self._engine.begin() as conn:
            if (await conn.execute(statement)).rowcount:
                return True
            exists = await conn.scalar(sa.select(tokens.c.id).where(tokens.c.id == token_id))
        return False if exists is not None else None

    async def revoke_project(self, project_id: str) -> RevokeResult:
        of_project = tokens.c.project_id == project_id
        statement = _deactivate(of_project, self._clock.now())
        async with translate_errors("revoke project tokens"), self._engine.begin() as conn:
            revoked = (await conn.execute(statement)).rowcount
            total = await conn.scalar(sa.select(sa.func.count()).where(of_project)) or 0
        return RevokeResult(revoked=revoked, already_revoked=total - revoked, total=total)

    async def consume_quota(self, token_id: str, now: datetime) -> QuotaOutcome:
        statement = (
            tokens.update()
            .where(
                tokens.c.id == token_id,
                _active,
                _unexpired(now),
                sa.or_(tokens.c.max_requests.is_(None),
                       tokens.c.request_count < tokens.c.max_requests),
            )
            .values(request_count=tokens.c.request_count + 1, last_used_at=latest(
                tokens.c.last_used_at, now))
        )
        async with translate_errors("consume token quota"), self._engine.begin() as conn:
            if (await conn.execute(statement)).rowcount:
                return QuotaOutcome.OK
            found = await conn.execute(sa.select(tokens).where(tokens.c.id == token_id))
            return _refusal(found.mappings().first(), now)

    async def apply_usage(self, deltas: Mapping[str, UsageDelta]) -> None:
        if not deltas:
            return
        rows = [
            {"tid": tid, "requests": d.requests, "hits": d.cache_hits, "used": d.last_used_at}
            for tid, d in deltas.items()
        ]
        async with translate_errors("record token usage"), self._engine.begin() as conn:
            await conn.execute(_ADD_USAGE, rows)

    async def _one(self, operation: str, where: sa.ColumnElement[bool]) -> Token | None:
        async with translate_errors(operation), self._engine.connect() as conn:
            row = (await conn.execute(sa.select(tokens).where(where))).mappings().first()
        return _token(row) if row is not None else None


def _deactivate(where: sa.ColumnElement[bool], now: datetime) -> sa.Update:
    return tokens.update().where(where, _active).values(
        is_active=False, deactivated_at=deactivation(tokens.c.deactivated_at, False, now)
    )


def _add_usage() -> sa.Update:
    """One statement, executed for many tokens at once; unknown ids match no row."""
    used = sa.bindparam("used", type_=UTCDateTime())
    last = tokens.c.last_used_at
    return (
        tokens.update()
        .where(tokens.c.id == sa.bindparam("tid"))
        .values(
            request_count=tokens.c.request_count + sa.bindparam("requests", type_=sa.Integer()),
            cache_hit_count=tokens.c.cache_hit_count + sa.bindparam("hits", type_=sa.Integer()),
            last_used_at=sa.case(
                (used.is_(None), last), (sa.or_(last.is_(None), last < used), used), else_=last
            ),
        )
    )


_ADD_USAGE = _add_usage()


def _unexpired(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > utc(now))


def _filters(
    project_id: str | None, active_only: bool, now: datetime
) -> list[sa.ColumnElement[bool]]:
    filters: list[sa.ColumnElement[bool]] = []
    if project_id is not None:
        filters.append(tokens.c.project_id == project_id)
    if active_only:
        filters += [_active, _unexpired(now)]
    return filters


def _refusal(row: RowMapping | None, now: datetime) -> QuotaOutcome:
    """Why the conditional quota UPDATE matched no row."""
    if row is None:
        return QuotaOutcome.NOT_FOUND
    if not row["is_active"]:
        return QuotaOutcome.INACTIVE
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return QuotaOutcome.EXPIRED
    return QuotaOutcome.EXHAUSTED


def _row(token: Token) -> dict[str, Any]:
    return {
        "id": token.id, "token_hash": token.token_hash, "token_hint": token.token_hint,
        "project_id": token.project_id, "expires_at": token.expires_at, "is_active": True,
        "request_count": 0, "max_requests": token.max_requests, "cache_hit_count": 0,
        "created_at": token.created_at, "meta": token.metadata,
        "cost_alert_threshold": token.cost_alert_threshold, "max_budget": token.max_budget,
        "budget_period": token.budget_period,
    }


def _token(row: RowMapping) -> Token:
    return Token(
        id=row["id"],
        token_hash=row["token_hash"],
        token_hint=row["token_hint"],
        project_id=row["project_id"],
        expires_at=row["expires_at"],
        is_active=bool(row["is_active"]),
        request_count=row["request_count"],
        max_requests=row["max_requests"],
        cache_hit_count=row["cache_hit_count"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        deactivated_at=row["deactivated_at"],
        metadata=dict(row["meta"] or {}),
        cost_alert_threshold=row["cost_alert_threshold"],
        max_budget=row["max_budget"],
        budget_period=row["budget_period"],
    )
