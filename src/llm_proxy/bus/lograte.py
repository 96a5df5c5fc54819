"""A log line that repeats at most once per interval, for conditions hit once per event."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.monotonic = monotonic
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
        self.logger.warning(message + suffix, *args)
        self._last, self._suppressed = now, 0
