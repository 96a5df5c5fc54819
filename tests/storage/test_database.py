from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from llm_proxy.errors import StorageError
from llm_proxy.records import AuditEntry, AuditQuery
from llm_proxy.settings import StorageSettings
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import SqlStorage, open_storage
from llm_proxy.storage.migrator import head_revision
from llm_proxy.storage.tables import tokens
from tests.storage.conftest import KEY, storage_settings


def settings_for(driver: str, *, path: str = "", url: str = "") -> StorageSettings:
    return StorageSettings(
        db_driver=driver, database_path=path, database_url=url, pool_size=2, max_idle_conns=1,
        conn_max_lifetime=60.0, auto_migrate=True,
    )


class TestSqlStorage:
    async def test_ping_and_migration_status(self, storage: SqlStorage) -> None:
        await storage.ping()

        assert await storage.migration_status() == (head_revision(), head_revision())

    async def test_timestamps_round_trip_as_aware_utc_with_microseconds(
        self, storage: SqlStorage
    ) -> None:
        local = datetime(2031, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-5)))
        entry = AuditEntry(id="e1", timestamp=local, action="a", actor="b", outcome="success")

        await storage.audit.append(entry)
        stored = await storage.audit.get("e1")

        assert stored is not None
        assert stored.timestamp == local
        assert stored.timestamp.tzinfo is UTC
        assert stored.timestamp == datetime(2032, 1, 1, 4, 59, 59, 999_999, tzinfo=UTC)

    async def test_naive_datetimes_are_refused(self, storage: SqlStorage) -> None:
        with pytest.raises(StorageError, match="naive datetime"):
            await storage.audit.query(
                AuditQuery(start_time=datetime(2030, 1, 1)), page=1, page_size=1
            )

    async def test_deleting_a_project_cascades_to_its_tokens(self, storage: SqlStorage) -> None:
        project = await storage.projects.create("alpha", "k")
        await storage.tokens.create(project_id=project.id, token_hash="b" * 64, token_hint="h",
                                    expires_at=None, max_requests=None, metadata={})

        async with storage.engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM projects"))
            remaining = await conn.scalar(sa.select(sa.func.count()).select_from(tokens))

        assert remaining == 0


class TestOpenStorage:
    async def test_sqlite_creates_the_directory_and_enables_wal_and_foreign_keys(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "nested" / "dir" / "proxy.db"
        storage = await open_storage(settings_for("sqlite", path=str(path)), KeyCipher(None),
                                     migrate=True)
        try:
            async with storage.engine.connect() as conn:
                journal = await conn.scalar(sa.text("PRAGMA journal_mode"))
                foreign_keys = await conn.scalar(sa.text("PRAGMA foreign_keys"))
        finally:
            await storage.aclose()

        assert path.exists()
        assert (journal, foreign_keys) == ("wal", 1)

    async def test_in_memory_sqlite_is_migrated_and_usable(self) -> None:
        storage = await open_storage(settings_for("sqlite", path=":memory:"), KeyCipher(KEY),
                                     migrate=True)
        try:
            project = await storage.projects.create("alpha", "k")
            assert await storage.projects.get(project.id) == project
        finally:
            await storage.aclose()

    async def test_without_migration_an_empty_database_fails_with_storage_error(
        self, backend: str, fresh_url: str
    ) -> None:
        storage = await open_storage(storage_settings(backend, fresh_url), KeyCipher(None),
                                     migrate=False)
        try:
            assert await storage.migration_status() == (None, head_revision())
            with pytest.raises(StorageError, match="list projects"):
                await storage.projects.list()
        finally:
            await storage.aclose()

    @pytest.mark.parametrize(
        ("driver", "url"),
        [
            ("postgres", "postgresql://postgres@127.0.0.1:1/test"),
            ("mysql", "mysql://root@127.0.0.1:1/test"),
        ],
    )
    async def test_unreachable_server_raises_storage_error(self, driver: str, url: str) -> None:
        storage = await open_storage(settings_for(driver, url=url), KeyCipher(None), migrate=False)
        try:
            with pytest.raises(StorageError, match="ping database"):
                await storage.ping()
            with pytest.raises(StorageError, match="read token"):
                await storage.tokens.get("x")
            with pytest.raises(StorageError):
                await storage.audit.query(AuditQuery(), page=1, page_size=10)
        finally:
            await storage.aclose()

        with pytest.raises(StorageError, match="migrate up"):
            await open_storage(settings_for(driver, url=url), KeyCipher(None), migrate=True)

    async def test_wrong_encryption_key_surfaces_as_storage_error(self, tmp_path: Path) -> None:
        settings = settings_for("sqlite", path=str(tmp_path / "db.sqlite"))
        first = await open_storage(settings, KeyCipher(KEY), migrate=True)
        try:
            project = await first.projects.create("alpha", "sk-upstream")
        finally:
            await first.aclose()

        second = await open_storage(settings, KeyCipher(bytes(32)), migrate=False)
        try:
            with pytest.raises(StorageError, match="ENCRYPTION_KEY"):
                await second.projects.get(project.id)
        finally:
            await second.aclose()
