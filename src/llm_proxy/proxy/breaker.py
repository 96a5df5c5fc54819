"""Per-upstream circuit breaker: closed → open → half-open → closed.

Only the upstream's own failures count (transport errors, 502/503/504 from the upstream); the
proxy's own 4xx/503 answers never do. While open, calls fail fast with 503 and `Retry-After`.
After `cooldown` one probe call is let through (half-open): success closes the circuit, failure
opens it again.
"""

from __future__ import annotations

import time

from llm_proxy.errors import ProxyError

FAILURE_STATUSES = frozenset({502, 503, 504})


class CircuitBreaker:
    def __init__(self, name: str, *, threshold: int = 5, cooldown: float = 30.0) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.probing or self._cooled() else "open"

    def before_call(self) -> None:
        """Raise 503 while open; let exactly one probe through once the cooldown passed."""
        if self.opened_at is None:
            return
        if not self.probing and self._cooled():
            self.probing = True
            return
        retry_after = max(1, int(self.cooldown - (time.monotonic() - self.opened_at)))
        raise ProxyError(
            503, f"Upstream {self.name} unavailable (circuit breaker open)", "upstream_unavailable",
            type_="api_error", headers={"Retry-After": str(retry_after)},
        )

    def record(self, status: int | None) -> None:
        """Report an upstream outcome: an HTTP status, or None for a transport error."""
        if status is not None and status not in FAILURE_STATUSES:
            self.failures = 0
            self.opened_at = None
            self.probing = False
            return
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = time.monotonic()
            self.probing = False

    def release_probe(self) -> None:
        """A probe ended without an upstream verdict (client went away): allow another."""
        self.probing = False

    def _cooled(self) -> bool:
        return self.opened_at is not None and time.monotonic() - self.opened_at >= self.cooldown
