"""Per-upstream circuit breaker with half-open probing."""

from __future__ import annotations

import pytest

from llm_proxy.errors import ProxyError
from llm_proxy.proxy.breaker import CircuitBreaker


class TestCircuitBreaker:
    def test_opens_after_threshold_consecutive_upstream_failures(self) -> None:
        breaker = CircuitBreaker("up", threshold=3, cooldown=60)
        for status in (502, None, 503):
            breaker.before_call()
            breaker.record(status)
        assert breaker.state == "open"
        with pytest.raises(ProxyError) as info:
            breaker.before_call()
        assert info.value.status == 503 and info.value.code == "upstream_unavailable"
        assert int(info.value.headers["Retry-After"]) >= 1

    def test_success_resets_the_count(self) -> None:
        breaker = CircuitBreaker("up", threshold=2, cooldown=60)
        breaker.record(502)
        breaker.record(200)
        breaker.record(502)
        assert breaker.state == "closed"

    def test_client_errors_are_not_failures(self) -> None:
        breaker = CircuitBreaker("up", threshold=1, cooldown=60)
        breaker.record(429)
        breaker.record(400)
        assert breaker.state == "closed"

    def test_half_open_lets_one_probe_through_and_closes_on_success(self) -> None:
        breaker = CircuitBreaker("up", threshold=1, cooldown=0.0)
        breaker.record(None)
        breaker.before_call()
        assert breaker.state == "half-open"
        with pytest.raises(ProxyError):
            breaker.before_call()
        breaker.record(200)
        assert breaker.state == "closed"

    def test_failed_probe_reopens(self) -> None:
        breaker = CircuitBreaker("up", threshold=5, cooldown=0.0)
        for _ in range(5):
            breaker.record(504)
        breaker.before_call()
        breaker.record(504)
        assert breaker.opened_at is not None and not breaker.probing
