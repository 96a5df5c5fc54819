"""Spend: budget and alert settings, daily spend, alerts sent, live workers, budget leases.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from llm_proxy.storage.tables import UTCDateTime

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
LIMITED = ("projects", "tokens")


def upgrade() -> None:
    for table in LIMITED:
        op.add_column(table, sa.Column("cost_alert_threshold", sa.Double, nullable=True))
        op.add_column(table, sa.Column("max_budget", sa.Double, nullable=True))
        op.add_column(table, sa.Column("budget_period", sa.String(16), nullable=False,
                                       server_default="monthly"))
    _create_spend()
    _create_spend_alerts()
    op.create_table(
        "spend_workers",
        sa.Column("worker_id", sa.String(36), nullable=False),
        sa.Column("seen_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_spend_workers")),
        **MYSQL,
    )
    op.create_table(
        "spend_leases",
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(36), nullable=False),
        sa.Column("worker_id", sa.String(36), nullable=False),
        sa.Column("period_start", UTCDateTime, nullable=False),
        sa.Column("reserved_usd", sa.Double, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("scope_kind", "scope_id", "worker_id", name=op.f("pk_spend_leases")),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("spend_leases")
    op.drop_table("spend_workers")
    op.drop_table("spend_alerts")
    op.drop_table("spend")
    for table in LIMITED:
        for column in ("budget_period", "max_budget", "cost_alert_threshold"):
            op.drop_column(table, column)


def _create_spend() -> None:
    op.create_table(
        "spend",
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(36), nullable=False),
        sa.Column("day", UTCDateTime, nullable=False),
        sa.Column("spent_usd", sa.Double, nullable=False, server_default="0"),
        sa.Column("max_call_usd", sa.Double, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("scope_kind", "scope_id", "day", name=op.f("pk_spend")),
        **MYSQL,
    )


def _create_spend_alerts() -> None:
    op.create_table(
        "spend_alerts",
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(36), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("period_start", UTCDateTime, nullable=False),
        sa.Column("threshold_usd", sa.Double, nullable=False),
        sa.Column("spent_usd", sa.Double, nullable=False),
        sa.Column("alerted_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("scope_kind", "scope_id", "period", "period_start",
                                name=op.f("pk_spend_alerts")),
        **MYSQL,
    )
