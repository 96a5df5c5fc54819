"""SqlStorage: the stores over one engine, and `open_storage` that builds it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_proxy.clock import Clock
from llm_proxy.settings import StorageSettings
from llm_proxy.storage.audit import SqlAuditStore
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.engine import create_engine
from llm_proxy.storage.errormap import translate_errors
from llm_proxy.storage.migrator import migrate_up, migration_status
from llm_proxy.storage.projects import SqlProjectStore
from llm_proxy.storage.spend import SqlSpendStore
from llm_proxy.storage.tokens import SqlTokenStore


class SqlStorage:
    """Implements `llm_proxy.storage.Storage`; owns (and disposes) the engine."""

    def __init__(self, engine: AsyncEngine, cipher: KeyCipher, clock: Clock | None = None) -> None:
        self.engine = engine
        self.projects = SqlProjectStore(engine, cipher, clock)
        self.tokens = SqlTokenStore(engine, clock)
        self.audit = SqlAuditStore(engine)
        self.spend = SqlSpendStore(engine, clock)

    async def ping(self) -> None:
        async with translate_errors("ping database"), self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def migration_status(self) -> tuple[str | None, str | None]:
        return await migration_status(self.engine)

    async def aclose(self) -> None:
        await self.engine.dispose()


async def open_storage(
    settings: StorageSettings, cipher: KeyCipher, *, migrate: bool, clock: Clock | None = None
) -> SqlStorage:
    """Build the storage; with `migrate`, first bring the schema to head (under the lock)."""
    engine = create_engine(settings)
    try:
        if migrate:
            await migrate_up(engine)
    except BaseException:
        await engine.dispose()
        raise
    return SqlStorage(engine, cipher, clock)
