"""Spend settings of project and token requests, and the current period's spend for their views."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

from llm_proxy.management.deps import ManagementDeps
from llm_proxy.management.schemas import BudgetPeriod
from llm_proxy.records import BUDGET_PERIODS, SpendLimits, SpendScope
from llm_proxy.storage import UNSET, LimitsUpdate
from llm_proxy.tokens.periods import period_start

LIMIT_FIELDS = ("cost_alert_threshold", "max_budget", "budget_period")


class Limited(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def budget_period(self) -> str: ...


class LimitsBody(Protocol):
    cost_alert_threshold: float | None
    max_budget: float | None

    @property
    def model_fields_set(self) -> set[str]: ...


def new_limits(body: LimitsBody, period: str) -> SpendLimits:
    return SpendLimits(body.cost_alert_threshold, body.max_budget, period)


def limits_update(body: LimitsBody, period: str | None) -> LimitsUpdate:
    """Only the fields the request gave; null clears an amount (the period cannot be null)."""
    given = body.model_fields_set
    return LimitsUpdate(
        cost_alert_threshold=body.cost_alert_threshold if "cost_alert_threshold" in given else UNSET,
        max_budget=body.max_budget if "max_budget" in given else UNSET,
        budget_period=period if period is not None else UNSET,
    )


def changed_limits(body: LimitsBody) -> dict[str, object]:
    """The audit details of a limits change."""
    return {f"updated_{name}": getattr(body, name) for name in LIMIT_FIELDS if name in body.model_fields_set}


async def spend_of(deps: ManagementDeps, kind: str, records: Sequence[Limited]) -> dict[str, float]:
    """USD spent in each record's current budget period (absent ids spent nothing)."""
    if not records:
        return {}
    now = deps.clock.now()
    since = {SpendScope(kind, record.id): period_start(period_of(record.budget_period), now) for record in records}
    totals = await deps.storage.spend.totals(since)
    return {scope.id: amount.usd for scope, amount in totals.items()}


def period_of(value: str) -> BudgetPeriod:
    """A stored period as the API shows it (a value the API would not accept reads as monthly)."""
    return cast(BudgetPeriod, value) if value in BUDGET_PERIODS else "monthly"
