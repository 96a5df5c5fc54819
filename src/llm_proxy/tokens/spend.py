"""SpendLedger: one worker's view of project and token spend, written to the database in batches.

Recording a call's cost is a dict update: it never awaits or raises on the request path. A
background task, every SPEND_FLUSH_INTERVAL: announces the worker (`spend_workers`), writes what
accumulated (one upsert per scope and UTC day), re-reads the period totals of the scopes with a
budget or an alert threshold, sends due alerts and renews this worker's budget leases.

A scope's known spend is `base` (its period total at the last read) plus what this worker wrote
since that read plus what it has not written yet. Reads, writes and lease grants run one at a
time (`_io`), so a read always includes every earlier write of this worker.

Budgets are enforced with leases (see `tokens/budget.py` and docs/budgets.md): a worker spends
only from budget the database granted it, one grant of a scope at a time across all workers.

Threshold alerts are decided on database totals only and claimed in `spend_alerts`, whose primary
key (scope, period, period start) lets exactly one worker of all instances send each alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from llm_proxy.audit.recorder import AuditRecorder
from llm_proxy.clock import Clock, new_id
from llm_proxy.errors import StorageError
from llm_proxy.records import BUDGET_PERIODS, LeaseRequest, SpendAmount, SpendLimits, SpendScope
from llm_proxy.storage import SpendStore
from llm_proxy.telemetry import Telemetry
from llm_proxy.tokens.alerts import THRESHOLD_EXCEEDED, ThresholdAlerts
from llm_proxy.tokens.periods import day_start, period_bounds
from llm_proxy.tokens.scopes import ScopeState

IDLE_SECONDS = 60.0
"""A scope unused this long (nothing pending or in flight) is dropped; its next call re-reads it."""
MIN_INTERVAL = 0.01
LIVE_INTERVALS = 5
"""A worker that has not announced itself for this many flush intervals (at least 5 s) is not counted."""
LEASE_INTERVALS = 10
"""Leases expire this many flush intervals (at least 10 s) after their last renewal."""
FORGET_AFTER = timedelta(hours=1)

__all__ = ["THRESHOLD_EXCEEDED", "ScopeState", "SpendLedger"]


class SpendLedger:
    def __init__(self, store: SpendStore, clock: Clock, *, flush_interval: float, telemetry: Telemetry,
                 audit: AuditRecorder, logger: logging.Logger) -> None:
        self._store = store
        self._clock = clock
        self._interval = max(MIN_INTERVAL, flush_interval)
        self._log = logger
        self._alerts = ThresholdAlerts(store, telemetry, audit, logger)
        self._states: dict[tuple[str, str], ScopeState] = {}
        self._dirty: set[ScopeState] = set()
        self._io = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._failing = False
        self._writes: set[asyncio.Task[None]] = set()
        self._today: tuple[datetime, datetime] | None = None
        self.worker_id = new_id()
        self.workers = 1
        """Live proxy workers of all instances, as last counted in the database (at least this one)."""

    @property
    def interval(self) -> float:
        return self._interval

    def state(self, kind: str, scope_id: str, project_id: str, limits: SpendLimits) -> ScopeState:
        found = self._states.get((kind, scope_id))
        if found is None:
            found = self._states[kind, scope_id] = ScopeState(SpendScope(kind, scope_id), project_id)
        found.limits = limits if limits.budget_period in BUDGET_PERIODS else replace(limits, budget_period="monthly")
        found.touched = time.monotonic()
        return found

    def today(self) -> datetime:
        """The UTC day now (the day a cost recorded now is counted in)."""
        now = self._clock.now()
        if not self._today or now >= self._today[1]:
            start = day_start(now)
            self._today = (start, start + timedelta(days=1))
        return self._today[0]

    def record_call(self, project_id: str, token_id: str, project_limits: SpendLimits, token_limits: SpendLimits,
                    cost_usd: float) -> None:
        """Count one call's cost against its project and its token."""
        day = self.today() if cost_usd > 0 else None
        self.record(self.state("project", project_id, project_id, project_limits), cost_usd, day)
        self.record(self.state("token", token_id, project_id, token_limits), cost_usd, day)

    def record(self, state: ScopeState, cost_usd: float, day: datetime | None) -> None:
        """Count one call's cost on `day` (0 for calls with usage but no price: they teach the estimate)."""
        state.max_call = cost_usd if state.max_call is None else max(state.max_call, cost_usd)
        if cost_usd <= 0 or day is None:
            return
        usd, largest = state.pending.get(day, (0.0, 0.0))
        state.pending[day] = (usd + cost_usd, max(largest, cost_usd))
        if state.limits.max_budget is not None and state.start is not None and day >= state.start:
            state.charged += cost_usd
        self._dirty.add(state)

    async def ensure_current(self, state: ScopeState) -> None:
        """Read the scope's period total unless it is known for the period now running."""
        now = self._clock.now()
        if state.current(now):
            return
        async with self._io:
            if not state.current(now):
                await self._read([state], now)

    async def grow(self, state: ScopeState, need: float, *, take_rest: bool = False) -> None:
        """Ask the database for at least `need` more of the scope's budget (maybe none is left)."""
        budget = state.limits.max_budget
        if budget is None or state.start is None:
            return
        async with self._io:
            now = self._clock.now()
            grant = await self._store.grant_lease(LeaseRequest(
                state.scope, self.worker_id, state.start, budget, need, self.workers, now, now + self._lease_life(),
                take_rest))
            state.base = grant.spent
            state.written.clear()
            state.lease = grant.held

    def write_soon(self, then: Callable[[], None]) -> None:
        """Write the pending spend now, in the background; call `then` afterwards (even on failure)."""
        task = asyncio.get_running_loop().create_task(self._write_then(then), name="spend-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def flush(self) -> bool:
        """Announce, write, re-read watched scopes, alert, renew leases; False (amounts kept) on failure."""
        async with self._io:
            now = self._clock.now()
            watched = [s for s in self._states.values() if s.limits.watched]
            try:
                await self._heartbeat(now)
                await self._write()
                if watched:
                    await self._read(watched, now)
                await self._renew_leases(now)
            except StorageError:
                if not self._failing:
                    self._log.warning("spend flush failed; keeping the amounts for the next attempt", exc_info=True)
                self._failing = True
                return False
            self._failing = False
            await self._alerts.check(watched, now)
            self._evict()
        return True

    async def start(self) -> None:
        """Count the live workers once before serving, then flush every interval in the background."""
        if self._task is not None:
            return
        try:
            async with self._io:
                await self._heartbeat(self._clock.now())
        except StorageError:
            self._log.warning("could not announce this worker for spend budgets", exc_info=True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="spend-flusher")

    async def aclose(self) -> None:
        self._closing.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if not await self.flush():
            self._log.error("the spend of %d projects and tokens was not written", len(self._dirty))

    async def _run(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=self._interval)
            if not self._closing.is_set():
                try:
                    await self.flush()
                except Exception:  # a bug here must not stop spend from being written later
                    self._log.exception("spend flush crashed")

    async def _write_then(self, then: Callable[[], None]) -> None:
        try:
            async with self._io:
                await self._write()
        except StorageError:
            self._log.warning("could not write spend at once; the next flush retries", exc_info=True)
        finally:
            then()

    def _lease_life(self) -> timedelta:
        return timedelta(seconds=max(10.0, LEASE_INTERVALS * self._interval))

    async def _heartbeat(self, now: datetime) -> None:
        live = timedelta(seconds=max(5.0, LIVE_INTERVALS * self._interval))
        counted = await self._store.heartbeat(self.worker_id, now, live_since=now - live,
                                              forget_before=now - FORGET_AFTER)
        self.workers = max(1, counted)

    async def _write(self) -> None:
        """Amounts being written count as written at once, so `known()` never misses them."""
        dirty, self._dirty = self._dirty, set()
        taken = {state: state.pending for state in dirty}
        for state, days in taken.items():
            state.pending = {}
            for day, (usd, _) in days.items():
                state.written[day] = state.written.get(day, 0.0) + usd
        batch = {(state.scope, day): SpendAmount(usd, largest)
                 for state, days in taken.items() for day, (usd, largest) in days.items()}
        try:
            await self._store.add(batch)
        except BaseException:
            self._restore(taken)
            raise
        await self._hand_back(taken)

    async def _hand_back(self, written: dict[ScopeState, dict[datetime, tuple[float, float]]]) -> None:
        """Spend now recorded no longer needs the lease that covered it: lower the leases by it.

        Lowered here first (calls admitted meanwhile must fit in what the database will say); if
        the database write fails, it keeps the larger lease, which is only more careful.
        """
        lowered: dict[SpendScope, tuple[datetime, float]] = {}
        for state, days in written.items():
            start = state.start
            if state.lease <= 0 or start is None:
                continue
            amount = min(state.charged, sum(usd for day, (usd, _) in days.items() if day >= start))
            state.lease, state.charged = max(0.0, state.lease - amount), state.charged - amount
            lowered[state.scope] = (start, state.lease)
        if lowered:
            await self._store.set_leases(self.worker_id, lowered, self._clock.now() + self._lease_life())

    def _restore(self, taken: dict[ScopeState, dict[datetime, tuple[float, float]]]) -> None:
        for state, days in taken.items():
            for day, (usd, largest) in days.items():
                state.written[day] -= usd
                now_usd, now_largest = state.pending.get(day, (0.0, 0.0))
                state.pending[day] = (now_usd + usd, max(now_largest, largest))
            self._dirty.add(state)

    async def _read(self, states: list[ScopeState], now: datetime) -> None:
        bounds = {state: (state.limits.budget_period, *period_bounds(state.limits.budget_period, now))
                  for state in states}
        totals = await self._store.totals({state.scope: start for state, (_, start, _) in bounds.items()})
        for state, (period, start, end) in bounds.items():
            amount = totals.get(state.scope, SpendAmount())
            if state.start != start:
                state.lease, state.charged = 0.0, 0.0
            state.period, state.start, state.end, state.base = period, start, end, amount.usd
            state.written.clear()
            if amount.max_call > 0:
                state.max_call = max(state.max_call or 0.0, amount.max_call)

    async def _renew_leases(self, now: datetime) -> None:
        """Extend every lease, handing back what a fair part of the free budget does not need."""
        busy_since = time.monotonic() - 2 * self._interval
        leased = {state: state.lease_to_keep(self.workers, busy=state.touched >= busy_since)
                  for state in self._states.values() if state.lease > 0 and state.start is not None}
        if not leased:
            return
        for state, usd in leased.items():
            # Lowered before the write: calls admitted meanwhile must fit in what the database will say.
            # Should the write fail, the database keeps the larger lease, which is only more careful.
            state.lease, state.charged = usd, state.unwritten()
        await self._store.set_leases(
            self.worker_id, {state.scope: (state.start, usd) for state, usd in leased.items() if state.start},
            now + self._lease_life())
        for state in leased:
            state.wake()

    def _evict(self) -> None:
        idle_since = time.monotonic() - IDLE_SECONDS
        idle = [key for key, state in self._states.items()
                if state.touched < idle_since and not state.in_flight and not state.waiters
                and not state.pending and state.lease <= 0 and state not in self._dirty]
        for key in idle:
            del self._states[key]
