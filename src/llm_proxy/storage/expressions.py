"""SQL expressions shared by the stores, written to mean the same on every dialect."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from llm_proxy.storage.tables import UTCDateTime


def utc(value: datetime | None) -> sa.ColumnElement[datetime]:
    """A bound timestamp typed so it is stored and compared like the UTCDateTime columns."""
    return sa.literal(value, type_=UTCDateTime())


def deactivation(
    column: sa.ColumnElement[Any], is_active: bool, now: datetime
) -> sa.ColumnElement[Any]:
    """deactivated_at after setting is_active: kept (or set to now) if false, cleared if true."""
    if is_active:
        return sa.null()
    return sa.func.coalesce(column, utc(now))


def latest(column: sa.ColumnElement[Any], when: datetime) -> sa.ColumnElement[Any]:
    """The later of a nullable timestamp column and `when` (GREATEST is not portable)."""
    return sa.case((sa.or_(column.is_(None), column < utc(when)), utc(when)), else_=column)
