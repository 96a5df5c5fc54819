"""Alembic environment: runs only on a connection handed over by `llm_proxy.storage.migrator`.

The migrator opens the connection, takes the cross-process migration lock and begins the
transaction; this script just runs the revisions on it (no offline `--sql` mode).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from llm_proxy.storage.tables import metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("llm-proxy migrations run through llm_proxy.storage.migrator only")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
