"""Storage fixtures: every store test runs on SQLite, PostgreSQL and MariaDB/MySQL.

PostgreSQL and MySQL tests use throwaway databases (`llmproxy_t_<random>`) created for this
session and dropped at its end; the shared one is emptied before each test.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from llm_proxy.settings import StorageSettings
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import SqlStorage, open_storage
from llm_proxy.storage.migrator import migrate_up
from llm_proxy.storage.tables import audit_events, projects, tokens
from tests.services import require_service

SERVERS = {
    "postgres": ("PostgreSQL", "127.0.0.1", 5432, "postgresql+asyncpg://postgres@127.0.0.1:5432"),
    "mysql": ("MariaDB/MySQL", "127.0.0.1", 3306, "mysql+aiomysql://root@127.0.0.1:3306"),
}
ADMIN_DATABASE = {"postgres": "test", "mysql": "test"}
DRIVERS = {"sqlite": "sqlite", "postgres": "postgres", "mysql": "mysql"}
BACKENDS = [
    pytest.param("sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]
KEY = bytes(range(32))


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


@dataclass
class ServerDatabases:
    """Creates throwaway databases on the real servers; drops them at the end of the session."""

    created: list[tuple[str, str]] = field(default_factory=list)
    shared_names: dict[str, str] = field(default_factory=dict)
    migrated: set[str] = field(default_factory=set)

    async def create(self, backend: str) -> str:
        name = f"llmproxy_t_{secrets.token_hex(6)}"
        await _admin(backend, f"CREATE DATABASE {name}")
        self.created.append((backend, name))
        return f"{SERVERS[backend][3]}/{name}"

    async def shared(self, backend: str) -> str:
        if backend not in self.shared_names:
            url = await self.create(backend)
            self.shared_names[backend] = url
        return self.shared_names[backend]

    def needs_migration(self, url: str) -> bool:
        """True the first time a URL is asked about."""
        if url in self.migrated:
            return False
        self.migrated.add(url)
        return True

    async def drop_all(self) -> None:
        for backend, name in self.created:
            drop = f"DROP DATABASE IF EXISTS {name}"
            await _admin(backend, drop + (" WITH (FORCE)" if backend == "postgres" else ""))


async def _admin(backend: str, statement: str) -> None:
    url = f"{SERVERS[backend][3]}/{ADMIN_DATABASE[backend]}"
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def server_databases() -> AsyncIterator[ServerDatabases]:
    databases = ServerDatabases()
    yield databases
    await databases.drop_all()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that tests copy instead of migrating their own."""
    path = tmp_path_factory.mktemp("sqlite-template") / "llm-proxy.db"
    await migrate_up(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name in SERVERS:
        label, host, port, _ = SERVERS[name]
        require_service(label, host, port)
    return name


@pytest.fixture
async def fresh_url(backend: str, tmp_path: Path, server_databases: ServerDatabases) -> str:
    """An empty database of its own (for migration tests)."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh' / 'llm-proxy.db'}"
    return await server_databases.create(backend)


@pytest.fixture
async def db_url(
    backend: str, tmp_path: Path, server_databases: ServerDatabases, sqlite_template: Path
) -> str:
    """A migrated database: a copy of the SQLite template, or the session's shared one."""
    if backend == "sqlite":
        path = tmp_path / "llm-proxy.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    return await server_databases.shared(backend)


def storage_settings(backend: str, url: str) -> StorageSettings:
    path = url.split("///", 1)[1] if backend == "sqlite" else "./unused.db"
    return StorageSettings(
        db_driver=DRIVERS[backend], database_path=path,
        database_url="" if backend == "sqlite" else url,
        pool_size=10, max_idle_conns=5, conn_max_lifetime=3600.0, auto_migrate=True,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC))


@pytest.fixture
async def storage(
    backend: str, db_url: str, clock: ManualClock, server_databases: ServerDatabases
) -> AsyncIterator[SqlStorage]:
    opened = await open_storage(
        storage_settings(backend, db_url), KeyCipher(KEY),
        migrate=backend != "sqlite" and server_databases.needs_migration(db_url), clock=clock,
    )
    try:
        async with opened.engine.begin() as conn:
            for table in (audit_events, tokens, projects):
                await conn.execute(sa.delete(table))
        yield opened
    finally:
        await opened.aclose()
