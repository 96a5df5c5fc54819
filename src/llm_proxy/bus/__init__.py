"""The event bus: how events leave the request path and reach the dispatchers.

Backends are sibling modules named in `BUSES` and built by `build_bus`:

    in-memory / memory       bus/memory.py         one process; bounded fan-out queues
    redis-streams / redis    bus/redis_streams.py  durable stream, consumer groups, disk spool

Delivery is at least once: a message is removed only when its subscriber acknowledges it, so a
consumer may see a message again (after a crash, a failed ack, or an idle claim). Events carry
a UUIDv7 `event_id` that makes downstream delivery idempotent.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_proxy.errors import ConfigError
from llm_proxy.events import Event
from llm_proxy.settings import ObservabilitySettings, RedisSettings

DEFAULT_GROUP = "llm-proxy-dispatchers"
"""Consumer group of a subscription that names none (and `REDIS_CONSUMER_GROUP` is unset)."""

BUSES: dict[str, str] = {
    "in-memory": "llm_proxy.bus.memory:MemoryBus",
    "memory": "llm_proxy.bus.memory:MemoryBus",
    "redis-streams": "llm_proxy.bus.redis_streams:RedisStreamsBus",
    "redis": "llm_proxy.bus.redis_streams:RedisStreamsBus",
}
ALIASES = {"memory": "in-memory", "redis": "redis-streams"}


class BusError(Exception):
    """The bus could not carry out an acknowledgement or a dead-lettering (retry later)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a subscriber: `id` is what `ack` takes back."""

    id: str
    event: Event
    deliveries: int = 1
    """How many times this message has been handed out, this time included."""


@dataclass(frozen=True, slots=True)
class Readiness:
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One consumer group (the in-memory bus keeps one bounded queue per group)."""

    group: str
    consumers: tuple[str, ...]
    delivered: int
    acked: int
    dropped: int
    dead_lettered: int
    depth: int
    pending: int


@dataclass(frozen=True, slots=True)
class BusStats:
    """Counters since start. `dropped` events are lost; everything else is accounted for."""

    backend: str
    published: int
    written: int
    """Events that reached the backend (the stream, or at least one group queue)."""
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    queue_depth: int = 0
    spool_bytes: int = 0
    connected: bool = True
    groups: tuple[GroupStats, ...] = field(default_factory=tuple)


class Subscription(Protocol):
    """A consumer's handle: receive, then acknowledge or dead-letter each delivery.

    A delivery that is neither acknowledged nor dead-lettered is handed out again once it has
    been idle for the claim time (to this or another consumer of the group); after
    `max_deliveries` hand-outs it goes to the dead-letter stream instead.
    """

    async def receive(self, max_count: int | None = None,
                      block: float | None = None) -> list[Delivery]:
        """Wait up to `block` seconds for messages; `[]` on timeout, outage or close."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove the messages for good; raises BusError if that could not be recorded."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move one message to the dead-letter stream with `reason`; raises BusError."""
        ...

    async def aclose(self) -> None: ...


class EventBus(Protocol):
    """Carries events from `publish` on the request path to subscribers.

    - `publish` is synchronous, O(1), never awaits, never raises and never blocks on the
      network; call it from the event loop's thread. An event it cannot keep is counted in
      `stats().dropped`.
    - `subscribe(name, group=...)`: consumers of one group share the messages, each group gets
      every message. `name` is the consumer's name, unique within its group.
    - `tap(name)`: an in-process subscription that sees every event this process publishes,
      outside any consumer group (used by the file event log so it never takes work away
      from the dispatchers).
    - `start()` before use; `aclose()` flushes what is still queued, then closes every
      subscription of this bus.
    """

    def publish(self, event: Event) -> None: ...

    def subscribe(self, name: str, *, group: str | None = None) -> Subscription: ...

    def tap(self, name: str) -> Subscription: ...

    def stats(self) -> BusStats: ...

    def ready(self) -> Readiness: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class BusFactory(Protocol):
    def from_settings(self, observability: ObservabilitySettings, redis: RedisSettings,
                      logger: logging.Logger) -> EventBus: ...


def import_from_string(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_bus(observability: ObservabilitySettings, redis: RedisSettings,
              logger: logging.Logger) -> EventBus:
    """The bus named by `LLM_PROXY_EVENT_BUS`, not yet started."""
    name = observability.event_bus
    if name not in BUSES:
        raise ConfigError([f"LLM_PROXY_EVENT_BUS: unknown bus {name!r}; valid: {', '.join(BUSES)}"])
    if name in ALIASES:
        logger.info("event bus %r is an alias of %r", name, ALIASES[name])
    factory: BusFactory = import_from_string(BUSES[name])
    return factory.from_settings(observability, redis, logger)
