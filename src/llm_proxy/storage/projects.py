"""SqlProjectStore: projects, with their upstream API keys encrypted at rest."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_proxy.clock import Clock, SystemClock, new_id
from llm_proxy.records import NO_LIMITS, Project, SpendLimits
from llm_proxy.storage import NO_CHANGE, UNSET, LimitsUpdate, Unset
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.errormap import translate_errors
from llm_proxy.storage.expressions import deactivation
from llm_proxy.storage.tables import projects


class SqlProjectStore:
    def __init__(self, engine: AsyncEngine, cipher: KeyCipher, clock: Clock | None = None) -> None:
        self._engine = engine
        self._cipher = cipher
        self._clock = clock or SystemClock()

    async def create(self, name: str, api_key: str, *, limits: SpendLimits = NO_LIMITS) -> Project:
        now = self._clock.now()
        project = Project(
            id=new_id(), name=name, api_key=api_key, is_active=True, created_at=now, updated_at=now,
            cost_alert_threshold=limits.cost_alert_threshold, max_budget=limits.max_budget,
            budget_period=limits.budget_period,
        )
        row = {
            "id": project.id, "name": name, "api_key": self._cipher.encrypt(api_key),
            "is_active": True, "created_at": now, "updated_at": now,
            "cost_alert_threshold": limits.cost_alert_threshold, "max_budget": limits.max_budget,
            "budget_period": limits.budget_period,
        }
        async with translate_errors("create project"), self._engine.begin() as conn:
            await conn.execute(projects.insert().values(row))
        return project

    async def get(self, project_id: str) -> Project | None:
        async with translate_errors("read project"), self._engine.connect() as conn:
            row = (await conn.execute(_by_id(project_id))).mappings().first()
        return self._project(row) if row is not None else None

    async def list(
        self, *, active_only: bool = False, limit: int = 100, offset: int = 0
    ) -> list[Project]:
        query = _filter(sa.select(projects), active_only).order_by(projects.c.name)
        query = query.limit(limit).offset(offset)
        async with translate_errors("list projects"), self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._project(row) for row in rows]

    async def count(self, *, active_only: bool = False) -> int:
        query = _filter(sa.select(sa.func.count()).select_from(projects), active_only)
        async with translate_errors("count projects"), self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def update(
        self,
        project_id: str,
        *,
        name: str | Unset = UNSET,
        api_key: str | Unset = UNSET,
        is_active: bool | Unset = UNSET,
        limits: LimitsUpdate = NO_CHANGE,
    ) -> Project | None:
        now = self._clock.now()
        values: dict[str, Any] = {"updated_at": now, **limits.values()}
        if not isinstance(name, Unset):
            values["name"] = name
        if not isinstance(api_key, Unset):
            values["api_key"] = self._cipher.encrypt(api_key)
        if not isinstance(is_active, Unset):
            values["is_active"] = is_active
            values["deactivated_at"] = deactivation(projects.c.deactivated_at, is_active, now)
        statement = projects.update().where(projects.c.id == project_id).values(values)
        async with translate_errors("update project"), self._engine.begin() as conn:
            if (await conn.execute(statement)).rowcount == 0:
                return None
            row = (await conn.execute(_by_id(project_id))).mappings().one()
        return self._project(row)

    def _project(self, row: RowMapping) -> Project:
        return Project(
            id=row["id"],
            name=row["name"],
            api_key=self._cipher.decrypt(row["api_key"]),
            is_active=bool(row["is_active"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            deactivated_at=row["deactivated_at"],
            cost_alert_threshold=row["cost_alert_threshold"],
            max_budget=row["max_budget"],
            budget_period=row["budget_period"],
        )


def _by_id(project_id: str) -> sa.Select[Any]:
    return sa.select(projects).where(projects.c.id == project_id)


def _filter(query: sa.Select[Any], active_only: bool) -> sa.Select[Any]:
    return query.where(projects.c.is_active == sa.true()) if active_only else query
