"""Initial schema: projects, tokens, audit_events.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from llm_proxy.storage.tables import UTCDateTime

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
OUTCOME_CHECK = "outcome IN ('success', 'failure', 'denied', 'error')"


def upgrade() -> None:
    _create_projects()
    _create_tokens()
    _create_audit_events()


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("tokens")
    op.drop_table("projects")


def _create_projects() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("api_key", sa.Text, nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("deactivated_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
        **MYSQL,
    )


def _create_tokens() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("token_hint", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("deactivated_at", UTCDateTime, nullable=True),
        sa.Column("request_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_requests", sa.Integer, nullable=True),
        sa.Column("cache_hit_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_tokens_token_hash")),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"],
            name=op.f("fk_tokens_project_id_projects"), ondelete="CASCADE",
        ),
        **MYSQL,
    )
    for column in ("project_id", "expires_at", "is_active"):
        op.create_index(op.f(f"ix_tokens_{column}"), "tokens", [column])


def _create_audit_events() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("timestamp", UTCDateTime, nullable=False),
        sa.Column("action", sa.String(255), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(191), nullable=True),
        sa.Column("request_id", sa.String(191), nullable=True),
        sa.Column("correlation_id", sa.String(191), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("user_agent", sa.Text, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("token_id", sa.String(191), nullable=True),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.CheckConstraint(OUTCOME_CHECK, name=op.f("ck_audit_events_outcome")),
        **MYSQL,
    )
    for column in ("timestamp", "action", "project_id", "request_id", "client_ip", "outcome"):
        op.create_index(op.f(f"ix_audit_events_{column}"), "audit_events", [column])
    op.create_index(
        op.f("ix_audit_events_client_ip_action"), "audit_events", ["client_ip", "action"]
    )
