"""ThresholdAlerts: `cost.threshold_exceeded` once per scope and period, across all workers."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from llm_proxy.audit.recorder import AuditRecorder
from llm_proxy.errors import StorageError
from llm_proxy.storage import SpendStore
from llm_proxy.telemetry import Telemetry
from llm_proxy.tokens.scopes import ScopeState

THRESHOLD_EXCEEDED = "llm_proxy.cost.threshold_exceeded"


class ThresholdAlerts:
    def __init__(self, store: SpendStore, telemetry: Telemetry, audit: AuditRecorder, logger: logging.Logger) -> None:
        self._store = store
        self._telemetry = telemetry
        self._audit = audit
        self._log = logger

    async def check(self, states: Iterable[ScopeState], now: datetime) -> None:
        """Alert for each scope whose period total (as just read) reached its threshold, if first."""
        for state in states:
            threshold = state.limits.cost_alert_threshold
            if threshold is None or state.start is None or state.period is None:
                continue
            due = (state.period, state.start)
            if state.base <= 0 or state.base < threshold or state.alerted == due:
                continue
            state.alerted = due
            try:
                first = await self._store.claim_alert(state.scope, state.period, state.start, threshold=threshold,
                                                      spent=state.base, at=now)
            except StorageError:
                state.alerted = None
                self._log.warning("could not record a spend alert; retrying at the next flush", exc_info=True)
                continue
            if first:
                self._announce(state, threshold)

    def _announce(self, state: ScopeState, threshold: float) -> None:
        scope = state.scope
        token_id = scope.id if scope.kind == "token" else None
        details = {"scope": scope.kind, "period": state.period,
                   "period_start": state.start.isoformat() if state.start else None,
                   "threshold_usd": threshold, "spent_usd": state.base}
        self._telemetry.execute(THRESHOLD_EXCEEDED, {"spent_usd": state.base, "threshold_usd": threshold},
                                {**details, "period_start": state.start, "project_id": state.project_id,
                                 "token_id": token_id})
        self._audit.record(
            "cost.threshold_exceeded", "system", "success", project_id=state.project_id, token_id=token_id,
            reason=f"{scope.kind} spend ${state.base:.6f} reached the {state.period} alert threshold ${threshold:g}",
            details=details,
        )
