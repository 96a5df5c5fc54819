"""BackoffPolicy: how long to wait before retry number n."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with full jitter, capped; a server's `Retry-After` wins when longer
    (up to `max_retry_after`).

    Full jitter (a uniform draw in [0, base·2ⁿ]) spreads the retries of many dispatchers that
    failed together; `min_fraction` keeps a floor so a retry never fires at once.
    """

    base: float = 1.0
    cap: float = 30.0
    max_retries: int = 5
    min_fraction: float = 0.5
    max_retry_after: float = 600.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        ceiling = min(self.cap, self.base * 2.0 ** retry)
        wait = ceiling * (self.min_fraction + (1 - self.min_fraction) * self.rng.random())
        if retry_after is not None and retry_after > wait:
            return min(retry_after, self.max_retry_after)
        return wait
