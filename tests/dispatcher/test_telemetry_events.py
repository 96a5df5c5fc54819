"""`llm_proxy.dispatcher.delivered` / `.failed`: one per batch outcome, never in the loop's way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import pytest

from llm_proxy.bus.memory import MemoryBus
from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.runner import DispatcherProcess, serve
from llm_proxy.dispatcher.service import Dispatcher
from llm_proxy.dispatcher.sinks import SinkRetryableError
from llm_proxy.dispatcher.sinks.memory import InMemorySink
from llm_proxy.telemetry import Telemetry
from tests.dispatcher.conftest import eventually, make_event, settings_with
from tests.dispatcher.test_service import DownSink, RejectingSink, dispatcher_settings, light_transform

DELIVERED = "llm_proxy.dispatcher.delivered"
FAILED = "llm_proxy.dispatcher.failed"

Emitted = tuple[str, dict[str, Any], dict[str, Any]]


def recording(telemetry: Telemetry) -> list[Emitted]:
    emitted: list[Emitted] = []

    def record(name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any], config: Any) -> None:
        emitted.append((name, dict(measurements), dict(metadata)))

    telemetry.attach_many("recorder", (DELIVERED, FAILED), record)
    return emitted


def of(emitted: list[Emitted], name: str) -> list[Emitted]:
    return [entry for entry in emitted if entry[0] == name]


class FlakySink(InMemorySink):
    """Answers 503 to the first `outages` calls, then confirms everything."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages
        self.attempts = 0

    async def send(self, records: Sequence[SinkRecord]) -> None:
        self.attempts += 1
        if self.attempts <= self.outages:
            raise SinkRetryableError("503 service unavailable")
        await super().send(records)


def observed(sink: InMemorySink, service: str, bus: MemoryBus | None = None,
             telemetry: Telemetry | None = None) -> tuple[MemoryBus, Dispatcher, list[Emitted]]:
    """A dispatcher from a memory bus to `sink`, and the dispatcher telemetry events it emits."""
    telemetry = telemetry if telemetry is not None else Telemetry()
    emitted = recording(telemetry)
    bus = bus if bus is not None else MemoryBus()
    dispatcher = Dispatcher(bus.subscribe("d", group="g"), sink, light_transform, dispatcher_settings(),
                            service=service, telemetry=telemetry)
    return bus, dispatcher, emitted


async def run_until(dispatcher: Dispatcher, done: Any) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run_until_stopped(stop))
    try:
        await eventually(done)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_delivered_batch_is_one_event_with_its_count_and_request_ids() -> None:
    bus, dispatcher, emitted = observed(InMemorySink(), "file")
    for i in range(3):
        bus.publish(make_event(i))
    await run_until(dispatcher, lambda: bool(emitted))
    [(_, measurements, metadata)] = emitted
    assert measurements["count"] == 3
    assert measurements["retries"] == 0
    assert 0 <= measurements["duration"] < 1
    assert metadata == {"service": "file", "sink": "InMemorySink", "request_ids": ["req-0", "req-1", "req-2"]}


async def test_rejected_and_untransformable_events_are_failed_and_dead_lettered() -> None:
    bus, dispatcher, emitted = observed(RejectingSink(), "lunary")
    for request_id in ("ok-1", "bad", "poison", "ok-2"):
        bus.publish(make_event(request_id=request_id))
    await run_until(dispatcher, lambda: len(emitted) == 3)
    [(_, delivered, delivered_meta)] = of(emitted, DELIVERED)
    assert delivered["count"] == 2
    assert delivered_meta["request_ids"] == ["ok-1", "ok-2"]
    failed = {metadata["error"]: (measurements, metadata) for _, measurements, metadata in of(emitted, FAILED)}
    assert set(failed) == {"SinkRejectedError", "TransformError"}
    rejected, rejected_meta = failed["SinkRejectedError"]
    assert rejected == {"count": 1}
    assert rejected_meta == {"service": "lunary", "sink": "RejectingSink", "error": "SinkRejectedError",
                             "message": "400 invalid payload", "dead_lettered": True, "request_ids": ["bad"]}
    untransformable, untransformable_meta = failed["TransformError"]
    assert untransformable == {"count": 1}
    assert untransformable_meta["message"] == "ValueError: cannot read this one"
    assert untransformable_meta["dead_lettered"] is True
    assert untransformable_meta["request_ids"] == ["poison"]
    assert len(bus.dead_letters) == 2


async def test_a_retried_batch_that_gets_through_is_delivered_with_its_retries_and_nothing_failed() -> None:
    sink = FlakySink(outages=2)
    bus, dispatcher, emitted = observed(sink, "helicone")
    for i in range(4):
        bus.publish(make_event(i))
    await run_until(dispatcher, lambda: bool(emitted))
    assert sink.attempts == 3
    [(name, measurements, metadata)] = emitted
    assert name == DELIVERED
    assert measurements["count"] == 4
    assert measurements["retries"] == 2
    assert measurements["duration"] >= 0.005 + 0.01  # the two backoff waits (at least half of 10 ms, 20 ms)
    assert metadata["request_ids"] == [f"req-{i}" for i in range(4)]
    assert not bus.dead_letters


async def test_events_still_failing_at_shutdown_are_failed_but_not_dead_lettered() -> None:
    sink = DownSink(retry_after=30)
    bus, dispatcher, emitted = observed(sink, "cloudwatch", MemoryBus(claim_time=0.2))
    for i in range(5):
        bus.publish(make_event(i))
    await run_until(dispatcher, lambda: sink.attempts == 1)
    [(name, measurements, metadata)] = emitted
    assert name == FAILED
    assert measurements == {"count": 5}
    assert metadata["error"] == "SinkRetryableError"
    assert metadata["dead_lettered"] is False
    assert metadata["request_ids"] == [f"req-{i}" for i in range(5)]
    assert bus.stats().groups[0].pending == 5
    assert not bus.dead_letters


async def test_a_raising_handler_is_detached_and_every_event_is_still_acknowledged(
        caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry()

    def broken(name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any], config: Any) -> None:
        raise RuntimeError("handler bug")

    telemetry.attach("broken", DELIVERED, broken)
    sink = InMemorySink()
    bus, dispatcher, emitted = observed(sink, "file", telemetry=telemetry)
    bus.publish(make_event(0))
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run_until_stopped(stop))
    with caplog.at_level(logging.ERROR, "llm_proxy.telemetry"):
        await eventually(lambda: len(emitted) == 1)
        for i in range(1, 4):
            bus.publish(make_event(i))
        await eventually(lambda: sum(m["count"] for _, m, _ in emitted) == 4)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [h.handler_id for h in telemetry.list_handlers()] == ["recorder", "recorder"]
    assert "'broken' failed on llm_proxy.dispatcher.delivered and was detached" in caplog.text
    assert len(sink.ids) == 4
    group = bus.stats().groups[0]
    assert (group.acked, group.pending) == (4, 0)
    assert dispatcher.stats.delivered == 4


async def test_serve_installs_telemetry_handlers_and_emits_on_its_registry_with_metrics_intact() -> None:
    telemetry = Telemetry()
    emitted = recording(telemetry)
    settings = settings_with(DISPATCHER_HEALTH_ADDR="127.0.0.1:0", DISPATCHER_FLUSH_INTERVAL="0.05",
                             TELEMETRY_HANDLERS="tests.telemetry.custom_handlers:install")
    bus = MemoryBus()
    stop = asyncio.Event()
    started: asyncio.Future[DispatcherProcess] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop, bus=bus, sink=InMemorySink(), started=started,
                                     telemetry=telemetry))
    try:
        process = await asyncio.wait_for(started, 5)
        assert process.dispatcher.telemetry is telemetry
        assert "slow-calls" in {h.handler_id for h in telemetry.list_handlers()}
        for i in range(2):
            bus.publish(make_event(i))
        await eventually(lambda: bool(emitted))
        assert process.health_address is not None
        host, port = process.health_address
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as response:
            assert response.status == 200
            metrics = await response.text()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    [(name, measurements, metadata)] = emitted
    assert (name, measurements["count"], metadata["service"]) == (DELIVERED, 2, "file")
    assert 'llm_proxy_dispatcher_events_total{outcome="delivered",service="file"} 2.0' in metrics
