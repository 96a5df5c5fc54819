"""The dispatcher loop: ack after the sink confirmed, dead-letter with the reason, drain on stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from llm_proxy.bus import build_bus
from llm_proxy.bus.memory import MemoryBus
from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.service import Dispatcher
from llm_proxy.dispatcher.sinks import SinkPartialError, SinkRejectedError, SinkRetryableError
from llm_proxy.dispatcher.sinks.memory import InMemorySink
from llm_proxy.events import Event
from llm_proxy.settings import DispatcherSettings
from tests.dispatcher.conftest import eventually, make_event, settings_with


def light_transform(event: Event) -> SinkRecord:
    if event.request_id == "poison":
        raise ValueError("cannot read this one")
    return SinkRecord(event, "chat", None, None)


def dispatcher_settings(**env: str) -> DispatcherSettings:
    return settings_with(**{"DISPATCHER_FLUSH_INTERVAL": "0.05", "DISPATCHER_DRAIN_TIMEOUT": "2", **env}).dispatcher


class RejectingSink(InMemorySink):
    """Rejects events whose request id is `bad`, confirms the rest."""

    async def send(self, records: Sequence[SinkRecord]) -> None:
        bad = {i: SinkRejectedError("400 invalid payload") for i, r in enumerate(records)
               if r.event.request_id == "bad"}
        await super().send([r for i, r in enumerate(records) if i not in bad])
        if bad:
            raise SinkPartialError(bad)


class DownSink(InMemorySink):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__()
        self.attempts = 0
        self.retry_after = retry_after

    async def send(self, records: Sequence[SinkRecord]) -> None:
        self.attempts += 1
        raise SinkRetryableError("503 service unavailable", retry_after=self.retry_after)


async def run_for(dispatcher: Dispatcher, until: asyncio.Event) -> None:
    await dispatcher.run_until_stopped(until)


class TestDispatcher:
    async def test_every_event_is_delivered_in_batches_and_acknowledged(self) -> None:
        bus = MemoryBus(1000)
        subscription = bus.subscribe("d1", group="g")
        sink = InMemorySink()
        dispatcher = Dispatcher(subscription, sink, light_transform, dispatcher_settings(DISPATCHER_BATCH_SIZE="100"))
        events = [make_event(i) for i in range(250)]
        for event in events:
            bus.publish(event)
        stop = asyncio.Event()
        task = asyncio.create_task(run_for(dispatcher, stop))
        await sink.wait_for(250)
        stop.set()
        await task
        assert sink.ids == [e.event_id for e in events]
        assert max(len(b) for b in sink.batches) == 100
        assert dispatcher.stats.delivered == 250
        assert dispatcher.stats.dead_lettered == 0
        group = bus.stats().groups[0]
        assert (group.acked, group.pending, group.depth) == (250, 0, 0)

    async def test_a_partial_batch_is_sent_after_the_flush_interval(self) -> None:
        bus = MemoryBus()
        sink = InMemorySink()
        dispatcher = Dispatcher(bus.subscribe("d", group="g"), sink, light_transform,
                                dispatcher_settings(DISPATCHER_BATCH_SIZE="100"))
        for i in range(3):
            bus.publish(make_event(i))
        stop = asyncio.Event()
        task = asyncio.create_task(run_for(dispatcher, stop))
        started = asyncio.get_running_loop().time()
        await sink.wait_for(3, limit=2)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert len(sink.batches) == 1
        stop.set()
        await task

    async def test_rejected_and_untransformable_events_are_dead_lettered_with_the_reason(self) -> None:
        bus = MemoryBus()
        sink = RejectingSink()
        dispatcher = Dispatcher(bus.subscribe("d", group="g"), sink, light_transform, dispatcher_settings(),
                                service="lunary")
        for request_id in ("ok-1", "bad", "poison", "ok-2"):
            bus.publish(make_event(request_id=request_id))
        stop = asyncio.Event()
        task = asyncio.create_task(run_for(dispatcher, stop))
        await eventually(lambda: len(bus.dead_letters) == 2 and len(sink.ids) == 2)
        stop.set()
        await task
        reasons = {d.event.request_id: reason for d, reason in bus.dead_letters}
        assert reasons["bad"] == "lunary sink: SinkRejectedError: 400 invalid payload"
        assert reasons["poison"].startswith("transform failed: ValueError: cannot read this one")
        assert [r.event.request_id for r in sink.records] == ["ok-1", "ok-2"]
        assert bus.stats().groups[0].pending == 0

    async def test_exhausted_retries_go_to_the_dead_letters(self) -> None:
        bus = MemoryBus()
        sink = DownSink()
        dispatcher = Dispatcher(bus.subscribe("d", group="g"), sink, light_transform,
                                dispatcher_settings(DISPATCHER_MAX_RETRIES="2"), service="helicone")
        bus.publish(make_event(0))
        stop = asyncio.Event()
        task = asyncio.create_task(run_for(dispatcher, stop))
        await eventually(lambda: len(bus.dead_letters) == 1)
        stop.set()
        await task
        assert sink.attempts == 3
        assert dispatcher.stats.retried == 2
        assert "gave up after 3 attempts" in bus.dead_letters[0][1]

    async def test_stop_during_retries_leaves_the_batch_pending_for_another_consumer(self) -> None:
        bus = MemoryBus(claim_time=0.2)
        sink = DownSink(retry_after=30)
        dispatcher = Dispatcher(bus.subscribe("d1", group="g"), sink, light_transform, dispatcher_settings())
        for i in range(5):
            bus.publish(make_event(i))
        stop = asyncio.Event()
        task = asyncio.create_task(run_for(dispatcher, stop))
        await eventually(lambda: sink.attempts == 1)
        stop.set()
        await asyncio.wait_for(task, 2)
        assert not bus.dead_letters
        assert dispatcher.stats.left_pending == 5
        assert bus.stats().groups[0].pending == 5
        rescuer = InMemorySink()
        second = Dispatcher(bus.subscribe("d2", group="g"), rescuer, light_transform, dispatcher_settings())
        stop2 = asyncio.Event()
        task2 = asyncio.create_task(run_for(second, stop2))
        await rescuer.wait_for(5, limit=3)
        stop2.set()
        await task2
        assert bus.stats().groups[0].pending == 0


@pytest.mark.redis
class TestOnRedis:
    async def test_a_consumer_that_dies_mid_batch_loses_nothing(self, redis_env: dict[str, str]) -> None:
        settings = settings_with(**{**redis_env, "REDIS_STREAM_CLAIM_TIME": "1", "DISPATCHER_FLUSH_INTERVAL": "0.05"})
        bus = build_bus(settings.observability, settings.redis, logging.getLogger("test"))
        await bus.start()
        try:
            first = bus.subscribe("doomed", group="g")
            hanging = DownSink(retry_after=60)
            doomed = Dispatcher(first, hanging, light_transform, settings.dispatcher)
            events = [make_event(i) for i in range(30)]
            for event in events:
                bus.publish(event)
            task = asyncio.create_task(doomed.run())
            await eventually(lambda: hanging.attempts >= 1)
            task.cancel()  # the process "dies" with the batch in flight: nothing was acked
            with pytest.raises(asyncio.CancelledError):
                await task
            sink = InMemorySink()
            rescuer = Dispatcher(bus.subscribe("rescuer", group="g"), sink, light_transform, settings.dispatcher)
            stop = asyncio.Event()
            rescue = asyncio.create_task(rescuer.run_until_stopped(stop))
            await sink.wait_for(30, limit=10)
            stop.set()
            await rescue
            assert set(sink.ids) == {e.event_id for e in events}
        finally:
            await bus.aclose()


class TestClaimInterplay:
    async def test_a_message_reclaimed_while_the_batch_fills_is_not_taken_twice(self) -> None:
        bus = MemoryBus(claim_time=0.05)
        dispatcher = Dispatcher(bus.subscribe("d", group="g"), InMemorySink(), light_transform,
                                dispatcher_settings(DISPATCHER_FLUSH_INTERVAL="0.3"))
        for i in range(3):
            bus.publish(make_event(i))
        batch = await dispatcher.collect()
        assert len(batch) == 3
        assert len({d.id for d in batch}) == 3

    async def test_retries_stop_before_the_claim_time_runs_out(self) -> None:
        bus = MemoryBus()
        sink = DownSink()
        settings = dispatcher_settings(DISPATCHER_MAX_RETRIES="50", DISPATCHER_BACKOFF_BASE="0.1",
                                       DISPATCHER_BACKOFF_MAX="0.2", DISPATCHER_TIMEOUT="0.1")
        dispatcher = Dispatcher(bus.subscribe("d", group="g"), sink, light_transform, settings, claim_time=0.6)
        bus.publish(make_event(0))
        stop = asyncio.Event()
        task = asyncio.create_task(run_for(dispatcher, stop))
        await eventually(lambda: len(bus.dead_letters) == 1, within=3)
        stop.set()
        await task
        assert 1 < sink.attempts < 10
        assert "gave up after" in bus.dead_letters[0][1]


class SlowSink(InMemorySink):
    async def send(self, records: Sequence[SinkRecord]) -> None:
        await asyncio.sleep(0.3)
        await super().send(records)


async def test_a_batch_in_flight_at_shutdown_is_delivered_and_acknowledged() -> None:
    bus = MemoryBus()
    sink = SlowSink()
    dispatcher = Dispatcher(bus.subscribe("d", group="g"), sink, light_transform, dispatcher_settings())
    for i in range(4):
        bus.publish(make_event(i))
    stop = asyncio.Event()
    task = asyncio.create_task(run_for(dispatcher, stop))
    await eventually(lambda: dispatcher.stats.batches == 1)
    stop.set()  # SIGTERM while the sink call is in flight
    await asyncio.wait_for(task, 2)
    assert len(sink.ids) == 4
    assert bus.stats().groups[0].acked == 4
    assert bus.stats().groups[0].pending == 0
