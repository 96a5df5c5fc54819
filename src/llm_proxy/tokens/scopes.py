"""ScopeState: what one worker knows and holds of one project's or token's spend."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from llm_proxy.records import NO_LIMITS, SpendLimits, SpendScope


@dataclass(eq=False, slots=True)
class ScopeState:
    scope: SpendScope
    project_id: str
    limits: SpendLimits = NO_LIMITS
    period: str | None = None
    start: datetime | None = None
    """Start of the period `base` was read for; None until the first read."""
    end: datetime | None = None
    base: float = 0.0
    """The period's recorded spend at the last read or lease grant."""
    max_call: float | None = None
    """The largest cost of one call seen for this scope (this worker, or the period's rows)."""
    written: dict[datetime, float] = field(default_factory=dict)
    """This worker's spend written since the last read, per day."""
    pending: dict[datetime, tuple[float, float]] = field(default_factory=dict)
    """This worker's spend not written yet, per day: (USD, largest call)."""
    lease: float = 0.0
    """What the database leased this worker of the period's budget."""
    charged: float = 0.0
    """Spend of this worker that the lease still covers (not yet handed back as recorded spend)."""
    reserved: float = 0.0
    """What this worker's calls in flight may cost (the largest call's cost each)."""
    in_flight: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    alerted: tuple[str, datetime] | None = None
    touched: float = 0.0

    def current(self, now: datetime) -> bool:
        return self.start is not None and self.end is not None and self.period == self.limits.budget_period \
            and now < self.end

    def known(self) -> float:
        start = self.start
        if start is None:
            return 0.0
        written = sum(usd for day, usd in self.written.items() if day >= start)
        return self.base + written + self.unwritten()

    def unwritten(self) -> float:
        start = self.start
        if start is None:
            return 0.0
        return sum(usd for day, (usd, _) in self.pending.items() if day >= start)

    def room(self) -> float:
        """Leased budget not yet spent or reserved by a call in flight."""
        return self.lease - self.charged - self.reserved

    def lease_to_keep(self, workers: int, *, busy: bool) -> float:
        """Renewal: what is unwritten or reserved, plus (while busy) room up to a fair part of what is left."""
        budget = self.limits.max_budget
        if budget is None:
            return 0.0
        needed = self.unwritten() + self.reserved
        if not busy:
            return needed
        fair = max(0.0, budget - self.known()) / (2 * max(1, workers))
        return needed + min(max(0.0, self.room()), fair)

    def wake(self) -> None:
        """Let every admission waiting on this scope decide again."""
        if not self.waiters:
            return
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
