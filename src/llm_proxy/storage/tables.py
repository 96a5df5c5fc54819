"""SQLAlchemy Core tables: the single source of the schema (migrations are its frozen history)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

OUTCOMES = ("success", "failure", "denied", "error")

MYSQL_TABLE_ARGS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes stored as naive UTC with microseconds on every dialect.

    Naive storage compares the same way everywhere (SQLite compares the ISO text, which works
    because SQLAlchemy always writes the six fractional digits); MySQL/MariaDB need DATETIME(6)
    or they drop the fraction.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in {"mysql", "mariadb"}:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=False))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def spend_limit_columns() -> list[sa.Column[Any]]:
    """USD amounts are DOUBLE everywhere (MySQL's FLOAT would be single precision)."""
    return [
        sa.Column("cost_alert_threshold", sa.Double, nullable=True),
        sa.Column("max_budget", sa.Double, nullable=True),
        sa.Column("budget_period", sa.String(16), nullable=False, server_default="monthly"),
    ]


projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("api_key", sa.Text, nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("deactivated_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    *spend_limit_columns(),
    **MYSQL_TABLE_ARGS,
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("token_hint", sa.String(64), nullable=False),
    sa.Column(
        "project_id", sa.String(36),
        sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True,
    ),
    sa.Column("expires_at", UTCDateTime, nullable=True, index=True),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true(), index=True),
    sa.Column("deactivated_at", UTCDateTime, nullable=True),
    sa.Column("request_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_requests", sa.Integer, nullable=True),
    sa.Column("cache_hit_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False, key="meta"),
    *spend_limit_columns(),
    **MYSQL_TABLE_ARGS,
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("timestamp", UTCDateTime, nullable=False, index=True),
    sa.Column("action", sa.String(255), nullable=False, index=True),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("project_id", sa.String(191), nullable=True, index=True),
    sa.Column("request_id", sa.String(191), nullable=True, index=True),
    sa.Column("correlation_id", sa.String(191), nullable=True),
    sa.Column("client_ip", sa.String(64), nullable=True, index=True),
    sa.Column("method", sa.String(16), nullable=True),
    sa.Column("path", sa.Text, nullable=True),
    sa.Column("user_agent", sa.Text, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("token_id", sa.String(191), nullable=True),
    sa.Column("metadata", sa.Text, nullable=True, key="meta"),
    sa.CheckConstraint(
        "outcome IN ({})".format(", ".join(f"'{o}'" for o in OUTCOMES)),
        name="outcome",
    ),
    sa.Index("ix_audit_events_client_ip_action", "client_ip", "action"),
    **MYSQL_TABLE_ARGS,
)

spend = sa.Table(
    "spend",
    metadata,
    sa.Column("scope_kind", sa.String(16), primary_key=True),
    sa.Column("scope_id", sa.String(36), primary_key=True),
    sa.Column("day", UTCDateTime, primary_key=True),
    sa.Column("spent_usd", sa.Double, nullable=False, server_default="0"),
    sa.Column("max_call_usd", sa.Double, nullable=False, server_default="0"),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE_ARGS,
)
"""One row per project or token and UTC day: budgets and thresholds sum the days of their period."""

spend_alerts = sa.Table(
    "spend_alerts",
    metadata,
    sa.Column("scope_kind", sa.String(16), primary_key=True),
    sa.Column("scope_id", sa.String(36), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("period_start", UTCDateTime, primary_key=True),
    sa.Column("threshold_usd", sa.Double, nullable=False),
    sa.Column("spent_usd", sa.Double, nullable=False),
    sa.Column("alerted_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE_ARGS,
)
"""A row per threshold alert sent; its primary key makes the alert once per period, across workers."""

spend_workers = sa.Table(
    "spend_workers",
    metadata,
    sa.Column("worker_id", sa.String(36), primary_key=True),
    sa.Column("seen_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE_ARGS,
)
"""Every proxy worker (of every instance) announces itself here at each spend flush; budgets count them."""

spend_leases = sa.Table(
    "spend_leases",
    metadata,
    sa.Column("scope_kind", sa.String(16), primary_key=True),
    sa.Column("scope_id", sa.String(36), primary_key=True),
    sa.Column("worker_id", sa.String(36), primary_key=True),
    sa.Column("period_start", UTCDateTime, nullable=False),
    sa.Column("reserved_usd", sa.Double, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    **MYSQL_TABLE_ARGS,
)
"""Budget a worker may spend before it asks again; grants are serialised on the scope's lock row
(`worker_id` empty), so the leases of all workers and the spend never add up to more than the budget."""
