"""MemoryBus: fan-out per group, shared work within a group, bounded queues, redelivery."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from llm_proxy.bus import DEFAULT_GROUP
from llm_proxy.bus.memory import MemoryBus
from tests.bus.conftest import make_event


class FakeClock:
    def __init__(self) -> None:
        self.seconds = 0.0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.seconds, UTC)

    def monotonic(self) -> float:
        return self.seconds


class TestMemoryBus:
    async def test_every_group_gets_every_event_in_order(self) -> None:
        bus = MemoryBus(100)
        a, b = bus.subscribe("a", group="lunary"), bus.subscribe("b", group="helicone")
        events = [make_event(i) for i in range(10)]
        for event in events:
            bus.publish(event)
        for sub in (a, b):
            got = await sub.receive(100, block=0)
            assert [d.event for d in got] == events
            assert all(d.deliveries == 1 for d in got)

    async def test_consumers_of_one_group_share_the_events(self) -> None:
        bus = MemoryBus(100)
        first, second = bus.subscribe("c1", group="g"), bus.subscribe("c2", group="g")
        for i in range(10):
            bus.publish(make_event(i))
        got_first = await first.receive(4, block=0)
        got_second = await second.receive(100, block=0)
        assert len(got_first) == 4
        assert len(got_second) == 6
        assert {d.id for d in got_first}.isdisjoint(d.id for d in got_second)

    async def test_a_slow_group_drops_its_own_overflow_without_touching_the_others(self) -> None:
        bus = MemoryBus(5)
        slow, fast = bus.subscribe("slow", group="slow"), bus.subscribe("fast", group="fast")
        received = 0
        for i in range(20):
            bus.publish(make_event(i))
            got = await fast.receive(10, block=0)
            await fast.ack(got)
            received += len(got)
        assert received == 20
        stats = {g.group: g for g in bus.stats().groups}
        assert stats["slow"].dropped == 15
        assert stats["slow"].depth == 5
        assert stats["fast"].dropped == 0
        assert stats["fast"].acked == 20
        assert len(await slow.receive(100, block=0)) == 5
        assert bus.stats().published == 20
        assert bus.stats().written == 20

    async def test_an_event_no_group_could_take_is_counted_as_dropped(self) -> None:
        bus = MemoryBus(1)
        bus.subscribe("only")
        bus.publish(make_event(1))
        bus.publish(make_event(2))
        assert (bus.stats().written, bus.stats().dropped) == (1, 1)

    async def test_unacknowledged_deliveries_count_against_the_buffer(self) -> None:
        bus = MemoryBus(2)
        sub = bus.subscribe("s")
        bus.publish(make_event(1))
        bus.publish(make_event(2))
        held = await sub.receive(10, block=0)
        bus.publish(make_event(3))
        assert bus.stats().groups[0].dropped == 1
        await sub.ack(held)
        bus.publish(make_event(4))
        assert [d.event.request_id for d in await sub.receive(10, block=0)] == ["req-4"]

    async def test_receive_waits_for_a_publish_and_times_out_empty(self) -> None:
        bus = MemoryBus(10)
        sub = bus.subscribe("s")
        began = time.monotonic()
        assert await sub.receive(block=0.05) == []
        assert time.monotonic() - began >= 0.04
        waiting = asyncio.create_task(sub.receive(block=5))
        await asyncio.sleep(0.01)
        bus.publish(make_event(7))
        assert [d.event.request_id for d in await waiting] == ["req-7"]

    async def test_unacked_deliveries_come_back_after_the_claim_time_then_dead_letter(self) -> None:
        clock = FakeClock()
        bus = MemoryBus(10, claim_time=30.0, max_deliveries=2, clock=clock)
        sub = bus.subscribe("s")
        bus.publish(make_event(1))
        assert [d.deliveries for d in await sub.receive(block=0)] == [1]
        clock.seconds = 29.0
        assert await sub.receive(block=0) == []
        clock.seconds = 30.0
        assert [d.deliveries for d in await sub.receive(block=0)] == [2]
        clock.seconds = 61.0
        assert await sub.receive(block=0) == []
        [(dead, reason)] = bus.dead_letters
        assert dead.event.request_id == "req-1"
        assert "2 times" in reason
        assert bus.stats().dead_lettered == 1

    async def test_dead_letter_removes_the_delivery_with_its_reason(self) -> None:
        bus = MemoryBus(10)
        sub = bus.subscribe("s")
        bus.publish(make_event(1))
        [delivery] = await sub.receive(block=0)
        await sub.dead_letter(delivery, "sink rejected it")
        assert list(bus.dead_letters) == [(delivery, "sink rejected it")]
        assert bus.stats().groups[0].pending == 0

    async def test_a_tap_sees_every_event_beside_the_groups(self) -> None:
        bus = MemoryBus(10)
        worker, tap = bus.subscribe("w"), bus.tap("file-event-log")
        bus.publish(make_event(1))
        assert len(await worker.receive(block=0)) == 1
        assert len(await tap.receive(block=0)) == 1
        assert {g.group for g in bus.stats().groups} == {DEFAULT_GROUP, "tap:file-event-log"}

    async def test_close_lets_subscribers_drain_then_returns_empty_and_counts_late_publishes(
            self) -> None:
        bus = MemoryBus(10)
        sub = bus.subscribe("s")
        bus.publish(make_event(1))
        await bus.aclose()
        bus.publish(make_event(2))
        assert len(await sub.receive(block=5)) == 1
        assert await sub.receive(block=5) == []
        assert bus.stats().dropped == 1
        assert not bus.ready().ok

    async def test_the_last_consumer_leaving_removes_its_group(self) -> None:
        bus = MemoryBus(10)
        sub = bus.subscribe("s", group="g")
        await sub.aclose()
        bus.publish(make_event(1))
        assert bus.stats().groups == ()
        assert bus.stats().dropped == 0
