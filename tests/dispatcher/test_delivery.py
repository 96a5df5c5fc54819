"""Delivery policy: retries re-send only what failed, splitting, Retry-After, rejection, shutdown."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence

import pytest

from llm_proxy.dispatcher.backoff import BackoffPolicy
from llm_proxy.dispatcher.delivery import RetryingSink, SplittingSink
from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.sinks import (
    RecordError,
    SinkPartialError,
    SinkRejectedError,
    SinkRetryableError,
    SinkTooLargeError,
)
from tests.dispatcher.conftest import make_event

Rule = Callable[[list[str]], RecordError | dict[int, RecordError] | None]


class ScriptedSink:
    """Answers each call with the next rule's outcome for the ids it was sent; records every call."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = list(rules)
        self.calls: list[list[str]] = []
        self.confirmed: list[str] = []

    async def send(self, records: Sequence[SinkRecord]) -> None:
        ids = [r.id for r in records]
        self.calls.append(ids)
        outcome = self.rules.pop(0)(ids) if self.rules else None
        if isinstance(outcome, dict):
            self.confirmed += [i for n, i in enumerate(ids) if n not in outcome]
            raise SinkPartialError(outcome)
        if outcome is not None:
            raise outcome
        self.confirmed += ids

    async def aclose(self) -> None:
        return None


def records(n: int) -> list[SinkRecord]:
    return [SinkRecord(make_event(i), "chat", None, None) for i in range(n)]


FAST = BackoffPolicy(base=0.001, cap=0.002, max_retries=3, rng=random.Random(1))


class TestBackoffPolicy:
    def test_grows_exponentially_with_jitter_and_a_cap(self) -> None:
        policy = BackoffPolicy(base=1.0, cap=8.0, rng=random.Random(7))
        delays = [policy.delay(n) for n in range(6)]
        for n, delay in enumerate(delays):
            ceiling = min(8.0, 2.0 ** n)
            assert ceiling / 2 <= delay <= ceiling

    def test_a_longer_retry_after_wins_up_to_its_bound(self) -> None:
        policy = BackoffPolicy(base=1.0, cap=2.0, max_retry_after=60.0)
        assert policy.delay(0, retry_after=7.0) == 7.0
        assert policy.delay(0, retry_after=600.0) == 60.0
        assert policy.delay(3, retry_after=0.1) <= 2.0


class TestRetryingSink:
    async def test_only_failed_records_are_sent_again(self) -> None:
        batch = records(4)
        sink = ScriptedSink(lambda ids: {1: SinkRetryableError("503"), 3: SinkRetryableError("503")})
        await RetryingSink(sink, FAST).send(batch)
        assert sink.calls == [[r.id for r in batch], [batch[1].id, batch[3].id]]
        assert sorted(sink.confirmed) == sorted(r.id for r in batch)
        assert len(sink.confirmed) == 4

    async def test_rejected_records_are_not_retried(self) -> None:
        batch = records(3)
        sink = ScriptedSink(lambda ids: {0: SinkRejectedError("400 bad"), 2: SinkRetryableError("503")})
        with pytest.raises(SinkPartialError) as caught:
            await RetryingSink(sink, FAST).send(batch)
        assert list(caught.value.failures) == [0]
        assert isinstance(caught.value.failures[0], SinkRejectedError)
        assert sink.calls[1] == [batch[2].id]

    async def test_exhausted_retries_report_the_attempts(self) -> None:
        sink = ScriptedSink(*[lambda ids: SinkRetryableError("down")] * 10)
        with pytest.raises(SinkPartialError) as caught:
            await RetryingSink(sink, FAST).send(records(2))
        assert len(sink.calls) == 4
        assert all("gave up after 4 attempts" in str(e) for e in caught.value.failures.values())

    async def test_retry_after_is_honoured(self) -> None:
        sink = ScriptedSink(lambda ids: SinkRetryableError("429", retry_after=0.2))
        started = asyncio.get_running_loop().time()
        await RetryingSink(sink, FAST).send(records(1))
        assert asyncio.get_running_loop().time() - started >= 0.2

    async def test_shutdown_interrupts_the_wait_and_starts_no_new_attempt(self) -> None:
        stopping = asyncio.Event()
        sink = ScriptedSink(lambda ids: SinkRetryableError("down", retry_after=30))
        retrying = RetryingSink(sink, BackoffPolicy(max_retries=5), stopping=stopping)
        task = asyncio.create_task(retrying.send(records(2)))
        await asyncio.sleep(0.05)
        stopping.set()
        with pytest.raises(SinkPartialError) as caught:
            await asyncio.wait_for(task, 1)
        assert len(sink.calls) == 1
        assert all(isinstance(e, SinkRetryableError) and "gave up" not in str(e)
                   for e in caught.value.failures.values())


class TestSplittingSink:
    async def test_batches_are_cut_to_the_sink_size(self) -> None:
        sink = ScriptedSink()
        await SplittingSink(sink, 2).send(records(5))
        assert [len(call) for call in sink.calls] == [2, 2, 1]

    async def test_too_large_calls_are_halved_and_a_lone_giant_rejected(self) -> None:
        batch = records(4)
        giant = batch[2].id

        def too_large_with_giant(ids: list[str]) -> RecordError | None:
            return SinkTooLargeError("413") if giant in ids else None

        sink = ScriptedSink(*[too_large_with_giant] * 10)
        with pytest.raises(SinkPartialError) as caught:
            await SplittingSink(sink, 10).send(batch)
        assert list(caught.value.failures) == [2]
        assert isinstance(caught.value.failures[2], SinkRejectedError)
        assert sorted(sink.confirmed) == sorted(r.id for r in batch if r.id != giant)

    async def test_an_outage_fails_the_rest_without_trying_it(self) -> None:
        sink = ScriptedSink(lambda ids: None, lambda ids: SinkRetryableError("connection refused"))
        with pytest.raises(SinkPartialError) as caught:
            await SplittingSink(sink, 2).send(records(6))
        assert len(sink.calls) == 2
        assert sorted(caught.value.failures) == [2, 3, 4, 5]

    async def test_partial_failures_keep_their_batch_positions(self) -> None:
        sink = ScriptedSink(lambda ids: None, lambda ids: {1: SinkRejectedError("bad")})
        with pytest.raises(SinkPartialError) as caught:
            await SplittingSink(sink, 2).send(records(4))
        assert list(caught.value.failures) == [3]
