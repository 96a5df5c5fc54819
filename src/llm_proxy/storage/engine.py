"""Database URL → AsyncEngine for SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, pool
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llm_proxy.errors import StorageError
from llm_proxy.settings import StorageSettings

CONNECT_TIMEOUT = 10.0
SQLITE_BUSY_TIMEOUT_MS = 30_000
WAL_SWITCH_ATTEMPTS = 60


def create_engine(settings: StorageSettings) -> AsyncEngine:
    """The service's pooled engine."""
    return engine_for_url(
        settings.url(),
        pool_size=settings.pool_size,
        max_overflow=settings.max_idle_conns,
        recycle=settings.conn_max_lifetime,
    )


def engine_for_url(
    url: str | URL,
    *,
    pool_size: int = 5,
    max_overflow: int = 5,
    recycle: float = 3600.0,
    pooled: bool = True,
) -> AsyncEngine:
    """An engine for `url`; `pooled=False` (one connection per use) suits one-shot tools."""
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if not pooled:
        options["poolclass"] = pool.NullPool
    else:
        options.update(pool_size=pool_size, max_overflow=max_overflow)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, options)
    options["connect_args"] = _connect_args(parsed.get_driver_name())
    if pooled:
        options.update(pool_recycle=int(recycle) if recycle > 0 else -1, pool_pre_ping=True)
    return create_async_engine(parsed, **options)


def _sqlite_engine(url: URL, options: dict[str, Any]) -> AsyncEngine:
    if url.database in (None, "", ":memory:"):
        # One shared connection, or every connection would see its own empty database.
        options = {"poolclass": pool.StaticPool}
    else:
        directory = Path(url.database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the SQLite directory {directory}: {exc}") from exc
        options.setdefault("poolclass", pool.AsyncAdaptedQueuePool)
    engine = create_async_engine(url, **options)
    event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine


def _connect_args(driver: str) -> dict[str, Any]:
    if driver == "asyncpg":
        return {"timeout": CONNECT_TIMEOUT}
    if driver == "aiomysql":
        return {"connect_timeout": CONNECT_TIMEOUT}
    return {}


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # busy_timeout first: switching to WAL needs a lock another connection may hold.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch a database to WAL, waiting for another connection that is switching it at the same moment.

    SQLite answers that race "database is locked" at once, without its busy timeout (seen when
    several processes or engines open a new database together). The mode is kept in the file, so
    the retry normally finds it switched. It blocks for at most about a second, only in that race.
    """
    for attempt in range(WAL_SWITCH_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt + 1 == WAL_SWITCH_ATTEMPTS:
                raise
            time.sleep(0.005 + 0.0005 * attempt)
