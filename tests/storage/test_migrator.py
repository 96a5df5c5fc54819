from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from llm_proxy.errors import StorageError
from llm_proxy.storage.engine import engine_for_url
from llm_proxy.storage.migrator import head_revision, migrate_down, migrate_up, migration_status
from llm_proxy.storage.tables import metadata

TABLES = {"projects", "tokens", "audit_events", "spend", "spend_alerts", "spend_workers", "spend_leases"}
INITIAL_TABLES = {"projects", "tokens", "audit_events"}


async def table_names(url: str) -> set[str]:
    engine = engine_for_url(url, pooled=False)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def schema_differences(url: str, target: sa.MetaData) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, target))

    engine = engine_for_url(url, pooled=False)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


class TestMigrator:
    async def test_up_status_down_cycle(self, fresh_url: str) -> None:
        head = head_revision()
        assert head is not None

        assert await migration_status(fresh_url) == (None, head)
        assert await migrate_up(fresh_url) == head
        assert await migration_status(fresh_url) == (head, head)
        assert await table_names(fresh_url) >= TABLES

        assert await migrate_down(fresh_url) == "0001"
        assert await table_names(fresh_url) & TABLES == INITIAL_TABLES
        assert await schema_differences(fresh_url, metadata) != [], "0002 is rolled back"
        assert await migrate_down(fresh_url) is None
        assert not TABLES & await table_names(fresh_url)
        assert await migrate_down(fresh_url) is None, "down at base is a no-op"
        assert await migrate_up(fresh_url) == head

    async def test_migrated_schema_matches_the_tables_module(self, fresh_url: str) -> None:
        await migrate_up(fresh_url)

        assert await schema_differences(fresh_url, metadata) == []
        drifted = sa.MetaData()
        for table in metadata.tables.values():
            table.to_metadata(drifted)
        sa.Table("extra", drifted, sa.Column("id", sa.Integer, primary_key=True))
        assert await schema_differences(fresh_url, drifted) != [], "the comparison can fail"

    async def test_concurrent_migrate_up_calls_both_succeed_once(self, fresh_url: str) -> None:
        head = head_revision()

        results = await asyncio.gather(*(migrate_up(fresh_url) for _ in range(3)))

        assert results == [head, head, head]
        assert await migration_status(fresh_url) == (head, head)

    async def test_unreachable_database_raises_storage_error(self) -> None:
        with pytest.raises(StorageError, match="migrate up"):
            await migrate_up("postgresql+asyncpg://postgres@127.0.0.1:1/test")
