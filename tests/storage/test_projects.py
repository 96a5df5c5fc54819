from __future__ import annotations

import pytest
import sqlalchemy as sa

from llm_proxy.errors import DuplicateError
from llm_proxy.storage.cipher import PREFIX
from llm_proxy.storage.database import SqlStorage
from llm_proxy.storage.tables import projects
from tests.storage.conftest import ManualClock


class TestProjectStore:
    async def test_create_then_get_returns_the_same_project(self, storage: SqlStorage) -> None:
        created = await storage.projects.create("alpha", "sk-upstream-1")

        fetched = await storage.projects.get(created.id)

        assert fetched == created
        assert created.is_active
        assert created.deactivated_at is None
        assert len(created.id) == 36

    async def test_api_key_is_stored_encrypted_and_read_back_in_clear(
        self, storage: SqlStorage
    ) -> None:
        created = await storage.projects.create("alpha", "sk-upstream-1")

        async with storage.engine.connect() as conn:
            stored = str(await conn.scalar(sa.select(projects.c.api_key)))
        fetched = await storage.projects.get(created.id)

        assert stored.startswith(PREFIX)
        assert "sk-upstream-1" not in stored
        assert fetched is not None
        assert fetched.api_key == "sk-upstream-1"

    async def test_duplicate_name_raises_duplicate_error(self, storage: SqlStorage) -> None:
        await storage.projects.create("alpha", "k1")

        with pytest.raises(DuplicateError):
            await storage.projects.create("alpha", "k2")

    async def test_renaming_onto_a_taken_name_raises_duplicate_error(
        self, storage: SqlStorage
    ) -> None:
        await storage.projects.create("alpha", "k1")
        beta = await storage.projects.create("beta", "k2")

        with pytest.raises(DuplicateError):
            await storage.projects.update(beta.id, name="alpha")

    async def test_get_unknown_is_none(self, storage: SqlStorage) -> None:
        assert await storage.projects.get("00000000-0000-0000-0000-000000000000") is None

    async def test_list_is_ordered_by_name_and_paginates(self, storage: SqlStorage) -> None:
        for name in ("charlie", "alpha", "bravo"):
            await storage.projects.create(name, "k")

        names = [p.name for p in await storage.projects.list()]
        page = [p.name for p in await storage.projects.list(limit=1, offset=1)]

        assert names == ["alpha", "bravo", "charlie"]
        assert page == ["bravo"]
        assert await storage.projects.count() == 3

    async def test_active_only_filters_list_and_count(self, storage: SqlStorage) -> None:
        alpha = await storage.projects.create("alpha", "k")
        await storage.projects.create("bravo", "k")
        await storage.projects.update(alpha.id, is_active=False)

        assert [p.name for p in await storage.projects.list(active_only=True)] == ["bravo"]
        assert await storage.projects.count(active_only=True) == 1

    async def test_partial_update_changes_only_given_fields_and_bumps_updated_at(
        self, storage: SqlStorage, clock: ManualClock
    ) -> None:
        created = await storage.projects.create("alpha", "k1")
        later = clock.advance(60)

        updated = await storage.projects.update(created.id, api_key="k2")

        assert updated is not None
        assert (updated.name, updated.api_key, updated.is_active) == ("alpha", "k2", True)
        assert updated.created_at == created.created_at
        assert updated.updated_at == later

    async def test_deactivation_sets_and_reactivation_clears_deactivated_at(
        self, storage: SqlStorage, clock: ManualClock
    ) -> None:
        created = await storage.projects.create("alpha", "k")
        first = clock.advance(10)
        deactivated = await storage.projects.update(created.id, is_active=False)
        clock.advance(10)
        again = await storage.projects.update(created.id, is_active=False)
        reactivated = await storage.projects.update(created.id, is_active=True)

        assert deactivated is not None
        assert again is not None
        assert reactivated is not None
        assert (deactivated.is_active, deactivated.deactivated_at) == (False, first)
        assert again.deactivated_at == first, "a second deactivation keeps the first time"
        assert (reactivated.is_active, reactivated.deactivated_at) == (True, None)

    async def test_update_of_unknown_project_is_none(self, storage: SqlStorage) -> None:
        assert await storage.projects.update("missing", name="x") is None
