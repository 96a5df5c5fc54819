"""BudgetGuard: admits a call only while its project's and token's budgets allow it.

A worker spends only budget the database leased it (`SpendStore.grant_lease`; grants of one scope
run one at a time across all workers and instances, and never lease more than the budget minus
the recorded spend and the other leases). Per scope with a `max_budget` B:

- known spend ≥ B: refuse, 429 `budget_exceeded`;
- the lease has room for one more call at the largest cost seen so far (e): reserve e, admit;
- otherwise ask for more lease (e, or a fair part of what is free) and decide again;
- less than e is free (or no call is priced yet) and this worker has no call of the scope in
  flight: lease all that is free and let this one call use it. It may cost more than that: this
  is the one call per worker the guarantee allows past the budget. It keeps its place until its
  cost is written to the database, so the next such grant anywhere sees it;
- else wait until a call of the scope ends here, or one flush interval (other workers hand back
  leased budget they do not use at their renewals), and decide again.

So the recorded spend of a period exceeds B by at most one call per worker, as long as no call
costs more than the largest earlier call: docs/budgets.md has the precise statement. The
admitted call's cost comes back through `Ticket.settle`, called by the instrumentation middleware
once the response is over (`None` when the call had no usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from llm_proxy import errors
from llm_proxy.errors import StorageError
from llm_proxy.tokens.authenticator import Grant
from llm_proxy.tokens.periods import NEVER
from llm_proxy.tokens.scopes import ScopeState
from llm_proxy.tokens.spend import SpendLedger

TICKET_KEY = "llm_proxy.budget"
"""Where the endpoint leaves the admitted call's `Ticket` in the ASGI scope."""

log = logging.getLogger("llm_proxy.budget")

MIN_NEED = 1e-9
"""What a call of a scope none of whose calls is priced yet asks for (it gets a fair part)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """One call's place in a scope: what it reserved of the lease, or that it is the overdraft."""

    state: ScopeState
    reserved: float = 0.0
    overdraft: bool = False


class Ticket:
    __slots__ = ("_grant", "_guard", "_holds", "_settled")

    def __init__(self, guard: BudgetGuard, grant: Grant, holds: tuple[Hold, ...]) -> None:
        self._guard = guard
        self._grant = grant
        self._holds = holds
        """Places taken in budgeted scopes (none when neither the project nor the token has a budget)."""
        self._settled = False

    def settle(self, cost_usd: float | None) -> None:
        """Count the call's cost and free its place; idempotent, never raises."""
        if self._settled:
            return
        self._settled = True
        try:
            self._guard.settle(self._grant, self._holds, cost_usd)
        except Exception:  # boundary: a bookkeeping bug must not break the response that just ended
            log.exception("could not settle a call's spend")


class BudgetGuard:
    def __init__(self, ledger: SpendLedger) -> None:
        self.ledger = ledger

    async def admit(self, grant: Grant) -> Ticket:
        if grant.project_limits.max_budget is None and grant.token_limits.max_budget is None:
            return Ticket(self, grant, ())  # nothing to check: the cost is only counted
        ledger = self.ledger
        holds: list[Hold] = []
        try:
            for kind, scope_id, limits in (("project", grant.project_id, grant.project_limits),
                                           ("token", grant.token.id, grant.token_limits)):
                if limits.max_budget is not None:
                    holds.append(await self._enter(ledger.state(kind, scope_id, grant.project_id, limits)))
        except BaseException:
            _release_all(tuple(holds))
            raise
        return Ticket(self, grant, tuple(holds))

    def settle(self, grant: Grant, holds: tuple[Hold, ...], cost_usd: float | None) -> None:
        if cost_usd is not None:
            self.ledger.record_call(grant.project_id, grant.token.id, grant.project_limits, grant.token_limits,
                                    cost_usd)
        if not holds:
            return
        _release_all(tuple(hold for hold in holds if not hold.overdraft))
        overdrafts = tuple(hold for hold in holds if hold.overdraft)
        if overdrafts:
            self.ledger.write_soon(lambda: _release_all(overdrafts))

    async def _enter(self, state: ScopeState) -> Hold:
        """Take a place among the scope's calls in flight; raise when the budget is used up."""
        asked = False
        while True:
            if state.limits.max_budget is not None:
                await _storage(self.ledger.ensure_current(state))
            budget = state.limits.max_budget
            if budget is None:
                return _hold(state, 0.0)
            if state.known() >= budget:
                raise _exceeded(state)
            estimate = state.max_call
            if estimate is not None and state.room() >= estimate:
                return _hold(state, estimate)
            if not state.in_flight:
                hold = await self._alone(state, budget, estimate)
                if hold is not None:
                    return hold
            elif estimate is not None and not asked:
                await _storage(self.ledger.grow(state, estimate - max(0.0, state.room())))
                asked = True
                continue
            await _wait(state, self.ledger.interval)
            asked = False

    async def _alone(self, state: ScopeState, budget: float, estimate: float | None) -> Hold | None:
        """No call of the scope in flight here: take what the lease needs, or all that is left.

        With less than one call's worth left (or no call priced yet) the call gets all of its
        room and is the worker's one call that may pass the budget. None: nothing is free now.
        """
        state.in_flight += 1  # claimed before awaiting, so no other call of the scope starts alone
        need = estimate if estimate is not None else MIN_NEED
        try:
            if state.room() < need:
                await _storage(self.ledger.grow(state, need - max(0.0, state.room()), take_rest=True))
            if state.known() >= budget:
                raise _exceeded(state)
        except BaseException:
            _release(Hold(state))
            raise
        room = state.room()
        if estimate is not None and room >= estimate:
            state.reserved += estimate
            return Hold(state, estimate)
        if room <= 0:
            _release(Hold(state))
            return None
        state.reserved += room
        return Hold(state, room, overdraft=True)


def _hold(state: ScopeState, reserved: float) -> Hold:
    state.in_flight += 1
    state.reserved += reserved
    return Hold(state, reserved)


def _release(hold: Hold) -> None:
    state = hold.state
    state.in_flight -= 1
    state.reserved -= hold.reserved
    state.wake()


def _release_all(holds: tuple[Hold, ...]) -> None:
    for hold in holds:
        _release(hold)


async def _storage(operation: Awaitable[None]) -> None:
    try:
        await operation
    except StorageError as exc:
        raise errors.service_unavailable("the spend store is unavailable") from exc


async def _wait(state: ScopeState, at_most: float) -> None:
    """Until one of the scope's calls in this worker ends, a lease renewal, or `at_most` seconds."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    state.waiters.append(waiter)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, at_most)
    finally:
        if waiter in state.waiters:
            state.waiters.remove(waiter)


def _exceeded(state: ScopeState) -> errors.ProxyError:
    end = state.end
    resets = end.strftime("%Y-%m-%dT%H:%M:%SZ") if end is not None and end != NEVER else None
    return errors.budget_exceeded(state.scope.kind, state.limits.max_budget or 0.0, state.limits.budget_period,
                                  resets)
