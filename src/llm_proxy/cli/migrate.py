"""`llm-proxy migrate up|down|status`: schema migrations on SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from llm_proxy.cli.options import build_environment, settings_or_exit
from llm_proxy.errors import StorageError
from llm_proxy.settings import StorageSettings
from llm_proxy.storage import migrator

T = TypeVar("T")


def _storage(env_file: str, db: str | None) -> StorageSettings:
    env = build_environment(env_file, {"DATABASE_PATH": db})
    return settings_or_exit(env, require_management_token=False).storage


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except StorageError as exc:
        raise click.ClickException(f"database error: {exc}") from exc


@click.group()
@click.option("--db", help="SQLite file (DATABASE_PATH); PostgreSQL/MySQL come from DB_DRIVER + DATABASE_URL.")
@click.option("--env", "env_file", default=".env", show_default=True, help="Env file read first.")
@click.pass_context
def migrate(ctx: click.Context, db: str | None, env_file: str) -> None:
    """Apply, roll back or inspect database migrations (run under a lock)."""
    ctx.obj = _storage(env_file, db)


@migrate.command()
@click.pass_obj
def up(storage: StorageSettings) -> None:
    """Apply every pending migration."""
    revision = _run(migrator.migrate_up(storage.url()))
    click.echo(f"Migrations applied successfully (now at {revision})")


@migrate.command()
@click.pass_obj
def down(storage: StorageSettings) -> None:
    """Roll back exactly one migration."""
    revision = _run(migrator.migrate_down(storage.url()))
    click.echo(f"Migration rolled back successfully (now at {revision or 'base'})")


@migrate.command()
@click.pass_obj
def status(storage: StorageSettings) -> None:
    """Show the current and the latest revision."""
    current, head = _run(migrator.migration_status(storage.url()))
    state = "up to date" if current == head else "migrations pending"
    click.echo(f"Current migration version: {current or 'none'} (head {head}; {state})")
