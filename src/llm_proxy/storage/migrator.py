"""Apply, roll back and report schema migrations, serialised across processes.

Up and down hold a database-wide lock for their whole duration, on the connection that runs the
migrations, so that several processes starting at once apply each revision exactly once:
PostgreSQL a session advisory lock, MySQL/MariaDB a named lock, SQLite an exclusive transaction
around the whole run (SQLite DDL is transactional, so the migration commits or vanishes as one).
Status reads one row and takes no lock, so a readiness probe never queues behind a migration.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llm_proxy.errors import StorageError
from llm_proxy.storage.engine import engine_for_url
from llm_proxy.storage.errormap import translate_errors

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
PG_LOCK_KEY = 3141592653
MYSQL_LOCK_NAME = "llm-proxy-migrations"
LOCK_TIMEOUT_SECONDS = 30

T = TypeVar("T")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config built in code: no alembic.ini is needed on disk."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def migrate_up(target: str | AsyncEngine) -> str | None:
    """Apply every pending revision; returns the revision the database is now at."""
    return await _run(target, "migrate up", _upgrade, locked=True)


async def migrate_down(target: str | AsyncEngine) -> str | None:
    """Roll back exactly one revision (nothing at base); returns the revision now current."""
    return await _run(target, "migrate down", _downgrade_one, locked=True)


async def migration_status(target: str | AsyncEngine) -> tuple[str | None, str | None]:
    """(current revision, head revision); current is None on an empty database."""
    current = await _run(target, "migration status", _current, locked=False)
    return current, head_revision()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection) -> str | None:
    command.upgrade(alembic_config(connection), "head")
    return _current(connection)


def _downgrade_one(connection: Connection) -> str | None:
    if _current(connection) is not None:
        command.downgrade(alembic_config(connection), "-1")
    return _current(connection)


async def _run(
    target: str | AsyncEngine, operation: str, fn: Callable[[Connection], T], *, locked: bool
) -> T:
    owned = isinstance(target, str)
    engine = engine_for_url(target, pooled=False) if isinstance(target, str) else target
    try:
        async with translate_errors(operation), engine.connect() as conn:
            try:
                async with _migration_lock(conn) if locked else contextlib.nullcontext():
                    result = await conn.run_sync(fn)
                    await conn.commit()
                    return result
            except BaseException:
                # A failed run may leave the session holding the lock or a broken transaction:
                # discard the connection so the server side lets go of both.
                await conn.invalidate()
                raise
    finally:
        if owned:
            await engine.dispose()


@asynccontextmanager
async def _migration_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        # Waits up to the connection's busy_timeout for another process's exclusive lock.
        await conn.exec_driver_sql("BEGIN EXCLUSIVE")
        yield
    elif dialect == "postgresql":
        await conn.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'"))
        await conn.execute(text(f"SELECT pg_advisory_lock({PG_LOCK_KEY})"))
        await conn.commit()
        yield
        await conn.execute(text(f"SELECT pg_advisory_unlock({PG_LOCK_KEY})"))
        await conn.execute(text("RESET lock_timeout"))
        await conn.commit()
    elif dialect in {"mysql", "mariadb"}:
        got = await conn.scalar(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": MYSQL_LOCK_NAME, "timeout": LOCK_TIMEOUT_SECONDS},
        )
        await conn.commit()
        if got != 1:
            raise StorageError(f"timed out waiting {LOCK_TIMEOUT_SECONDS}s for the migration lock")
        yield
        await conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": MYSQL_LOCK_NAME})
        await conn.commit()
    else:
        raise StorageError(f"migrations do not support the {dialect} dialect")
