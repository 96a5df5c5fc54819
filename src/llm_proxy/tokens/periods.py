"""Budget periods: UTC calendar days, ISO weeks (from Monday), calendar months, or all time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llm_proxy.records import BUDGET_PERIODS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The start of the `total` period: every day ever recorded."""
NEVER = datetime.max.replace(tzinfo=UTC)


def day_start(moment: datetime) -> datetime:
    utc = moment.astimezone(UTC)
    return datetime(utc.year, utc.month, utc.day, tzinfo=UTC)


def period_bounds(period: str, moment: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the period containing `moment`; `total` never ends."""
    day = day_start(moment)
    if period == "daily":
        return day, day + timedelta(days=1)
    if period == "weekly":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "monthly":
        start = day.replace(day=1)
        following = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
            month=start.month + 1)
        return start, following
    if period == "total":
        return EPOCH, NEVER
    raise ValueError(f"budget period must be one of {', '.join(BUDGET_PERIODS)}, got {period!r}")


def period_start(period: str, moment: datetime) -> datetime:
    return period_bounds(period, moment)[0]
