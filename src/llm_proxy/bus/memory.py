"""MemoryBus: the in-process bus for one-process runs, tests and benchmarks.

Every consumer group owns one bounded queue; `publish` appends the event to each group's queue
(fan-out) and never waits. A group whose queue plus unacknowledged deliveries reach the buffer
size drops the new event and counts the drop, so a slow group never slows the publisher or the
other groups. Nothing survives the process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from typing import Self

from llm_proxy.bus import DEFAULT_GROUP, BusStats, Delivery, GroupStats, Readiness
from llm_proxy.clock import Clock, SystemClock
from llm_proxy.events import Event
from llm_proxy.settings import ObservabilitySettings, RedisSettings


class _Group:
    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.queue: deque[Delivery] = deque()
        self.pending: dict[str, tuple[Delivery, float]] = {}
        self.consumers: list[MemorySubscription] = []
        self.wakeup = asyncio.Event()
        self.closed = False
        self.delivered = self.acked = self.dropped = self.dead_lettered = 0

    def offer(self, delivery: Delivery) -> bool:
        if self.closed or len(self.queue) + len(self.pending) >= self.capacity:
            self.dropped += 1
            return False
        self.queue.append(delivery)
        if not self.wakeup.is_set():
            self.wakeup.set()
        return True

    def stats(self) -> GroupStats:
        return GroupStats(self.name, tuple(c.name for c in self.consumers), self.delivered,
                          self.acked, self.dropped, self.dead_lettered, len(self.queue),
                          len(self.pending))


class MemoryBus:
    """In-process fan-out bus; see the module docstring for the drop policy."""

    backend = "in-memory"

    def __init__(self, buffer_size: int = 1000, *, claim_time: float = 30.0,
                 max_deliveries: int = 5, clock: Clock | None = None) -> None:
        self.buffer_size = buffer_size
        self.claim_time = claim_time
        self.max_deliveries = max_deliveries
        self.clock = clock or SystemClock()
        self.dead_letters: deque[tuple[Delivery, str]] = deque(maxlen=buffer_size)
        self._groups: dict[str, _Group] = {}
        self._ids = itertools.count(1)
        self._published = self._written = self._dropped = 0
        self._closed = False

    @classmethod
    def from_settings(cls, observability: ObservabilitySettings, redis: RedisSettings,
                      logger: logging.Logger) -> Self:
        return cls(observability.buffer_size, claim_time=redis.claim_time,
                   max_deliveries=redis.max_deliveries)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._groups)

    def publish(self, event: Event) -> None:
        self._published += 1
        if self._closed:
            self._dropped += 1
            return
        delivery = Delivery(str(next(self._ids)), event)
        accepted = False
        for group in self._groups.values():
            accepted = group.offer(delivery) or accepted
        if accepted or not self._groups:
            self._written += accepted
        else:
            self._dropped += 1

    def subscribe(self, name: str, *, group: str | None = None) -> MemorySubscription:
        group_name = group or DEFAULT_GROUP
        target = self._groups.get(group_name)
        if target is None:
            target = self._groups[group_name] = _Group(group_name, self.buffer_size)
        subscription = MemorySubscription(self, target, name)
        target.consumers.append(subscription)
        if self._closed:
            target.closed = True
        return subscription

    def tap(self, name: str) -> MemorySubscription:
        return self.subscribe(name, group=f"tap:{name}")

    def stats(self) -> BusStats:
        groups = tuple(g.stats() for g in self._groups.values())
        return BusStats(
            backend=self.backend, published=self._published, written=self._written,
            dropped=self._dropped, dead_lettered=sum(g.dead_lettered for g in groups),
            queue_depth=sum(g.depth for g in groups), groups=groups,
        )

    def ready(self) -> Readiness:
        return Readiness(not self._closed, "event bus closed" if self._closed else "")

    async def start(self) -> None:
        self._closed = False

    async def aclose(self) -> None:
        """Stop accepting events; subscribers still drain what is queued, then get `[]`."""
        self._closed = True
        for group in self._groups.values():
            group.closed = True
            group.wakeup.set()

    def _forget(self, subscription: MemorySubscription) -> None:
        group = subscription.group
        if subscription in group.consumers:
            group.consumers.remove(subscription)
        if not group.consumers and self._groups.get(group.name) is group:
            del self._groups[group.name]
            group.closed = True
            group.wakeup.set()


class MemorySubscription:
    def __init__(self, bus: MemoryBus, group: _Group, name: str) -> None:
        self.bus = bus
        self.group = group
        self.name = name

    async def receive(self, max_count: int | None = None,
                      block: float | None = None) -> list[Delivery]:
        limit = max_count or 100
        loop = asyncio.get_running_loop()
        deadline = None if block is None else loop.time() + block
        while True:
            batch = self._take(limit)
            if batch or self.group.closed:
                return batch
            self.group.wakeup.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            try:
                await asyncio.wait_for(self.group.wakeup.wait(), remaining)
            except TimeoutError:
                return []

    def _take(self, limit: int) -> list[Delivery]:
        group = self.group
        now = self.bus.clock.monotonic()
        batch = self._reclaim(now, limit)
        while group.queue and len(batch) < limit:
            delivery = group.queue.popleft()
            group.pending[delivery.id] = (delivery, now)
            batch.append(delivery)
        group.delivered += len(batch)
        return batch

    def _reclaim(self, now: float, limit: int) -> list[Delivery]:
        """Hand out again the oldest deliveries left unacknowledged for the claim time."""
        group, batch = self.group, list[Delivery]()
        # `pending` is ordered by hand-out time, so the expired ones are at the front.
        for delivery, handed_out in list(group.pending.values()):
            if len(batch) >= limit or now - handed_out < self.bus.claim_time:
                break
            del group.pending[delivery.id]
            if delivery.deliveries >= self.bus.max_deliveries:
                self._bury(delivery, f"delivered {delivery.deliveries} times without ack")
                continue
            again = Delivery(delivery.id, delivery.event, delivery.deliveries + 1)
            group.pending[again.id] = (again, now)
            batch.append(again)
        return batch

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            if self.group.pending.pop(delivery.id, None) is not None:
                self.group.acked += 1

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if self.group.pending.pop(delivery.id, None) is not None:
            self._bury(delivery, reason)

    def _bury(self, delivery: Delivery, reason: str) -> None:
        self.group.dead_lettered += 1
        self.bus.dead_letters.append((delivery, reason))

    async def aclose(self) -> None:
        self.bus._forget(self)
