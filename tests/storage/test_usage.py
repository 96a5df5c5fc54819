from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from llm_proxy.errors import StorageError
from llm_proxy.records import UsageDelta
from llm_proxy.storage import TokenStore
from llm_proxy.storage.database import SqlStorage
from llm_proxy.storage.usage import UsageCounter

T0 = datetime(2030, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
T2 = T0 + timedelta(seconds=2)
LOG = logging.getLogger("tests.usage")


class RecordingStore:
    """The one TokenStore method UsageCounter uses; fails while `failing` is set."""

    def __init__(self) -> None:
        self.batches: list[dict[str, UsageDelta]] = []
        self.failing = False
        self.calls = 0

    async def apply_usage(self, deltas: Mapping[str, UsageDelta]) -> None:
        self.calls += 1
        if self.failing:
            raise StorageError("record token usage: database unavailable (simulated)")
        self.batches.append(dict(deltas))


def counter(store: RecordingStore, *, max_pending: int = 1000, interval: float = 60.0) -> UsageCounter:
    return UsageCounter(cast(TokenStore, store), max_pending=max_pending, flush_interval=interval,
                        logger=LOG)


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll until `condition` holds (the counter has no hook to wait on), for at most 2 s."""
    async with asyncio.timeout(2.0):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


class TestUsageCounter:
    async def test_records_accumulate_per_token_until_flushed(self) -> None:
        store = RecordingStore()
        usage = counter(store)

        usage.record_request("a", T1)
        usage.record_request("a", T0)
        usage.record_cache_hit("a", T2)
        usage.record_request("b", T0)

        assert usage.pending() == {"a": UsageDelta(2, 1, T2), "b": UsageDelta(1, 0, T0)}
        assert store.batches == []
        assert await usage.flush() is True
        assert store.batches == [{"a": UsageDelta(2, 1, T2), "b": UsageDelta(1, 0, T0)}]
        assert usage.pending() == {}

    async def test_reaching_max_pending_flushes_without_waiting_for_the_interval(self) -> None:
        store = RecordingStore()
        usage = counter(store, max_pending=3, interval=60.0)
        usage.start()
        try:
            for _ in range(3):
                usage.record_request("a", T0)
            await eventually(lambda: bool(store.batches))
        finally:
            await usage.aclose()

        assert store.batches == [{"a": UsageDelta(3, 0, T0)}]

    async def test_the_interval_flushes_a_small_batch(self) -> None:
        store = RecordingStore()
        usage = counter(store, interval=0.02)
        usage.start()
        try:
            usage.record_cache_hit("a", T0)
            await eventually(lambda: bool(store.batches))
        finally:
            await usage.aclose()

        assert store.batches == [{"a": UsageDelta(0, 1, T0)}]

    async def test_a_failed_flush_keeps_the_deltas_and_merges_new_ones(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = RecordingStore()
        usage = counter(store)
        usage.record_request("a", T1)
        store.failing = True

        assert await usage.flush() is False
        usage.record_request("a", T0)
        usage.record_cache_hit("b", T2)
        store.failing = False
        assert await usage.flush() is True

        assert store.batches == [{"a": UsageDelta(2, 0, T1), "b": UsageDelta(0, 1, T2)}]
        assert "usage flush failed" in caplog.text

    async def test_background_flush_retries_after_a_failure(self) -> None:
        store = RecordingStore()
        store.failing = True
        usage = counter(store, max_pending=1, interval=0.02)
        usage.start()
        try:
            usage.record_request("a", T0)
            await eventually(lambda: store.calls >= 1)
            usage.record_request("a", T1)
            store.failing = False
            await eventually(lambda: bool(store.batches))
        finally:
            await usage.aclose()

        assert store.batches == [{"a": UsageDelta(2, 0, T1)}]

    async def test_close_flushes_what_is_left(self) -> None:
        store = RecordingStore()
        usage = counter(store)
        usage.start()
        usage.record_request("a", T0)

        await usage.aclose()

        assert store.batches == [{"a": UsageDelta(1, 0, T0)}]

    async def test_close_with_a_failing_store_keeps_the_deltas_and_logs(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = RecordingStore()
        store.failing = True
        usage = counter(store)
        usage.record_request("a", T0)

        await usage.aclose()

        assert usage.pending() == {"a": UsageDelta(1, 0, T0)}
        assert "were not written" in caplog.text


class TestUsageCounterWithTheDatabase:
    async def test_counts_land_in_the_token_row(self, storage: SqlStorage) -> None:
        project = await storage.projects.create("alpha", "k")
        token = await storage.tokens.create(project_id=project.id, token_hash="c" * 64,
                                            token_hint="h", expires_at=None, max_requests=None,
                                            metadata={})
        usage = UsageCounter(storage.tokens, max_pending=100, flush_interval=60.0, logger=LOG)
        usage.start()
        for _ in range(5):
            usage.record_request(token.id, T1)
        usage.record_cache_hit(token.id, T0)

        await usage.aclose()

        stored = await storage.tokens.get(token.id)
        assert stored is not None
        assert (stored.request_count, stored.cache_hit_count, stored.last_used_at) == (5, 1, T1)
