"""Dispatcher: bus → transform → sink → acknowledge, at least once, never dropping silently.

One loop: collect a batch (full at `batch_size`, or `flush_interval` after its first event),
transform it, send it through `RetryingSink(SplittingSink(sink))`, then
- acknowledge what the sink confirmed,
- dead-letter, with the sink's error, what it rejected and what still failed after the retries
  (and events the transformer could not handle),
- leave unacknowledged what was still being retried when shutdown began, so another consumer
  of the group claims it once it has been idle for `REDIS_STREAM_CLAIM_TIME`.

Shutdown (`stop()`): no new batch is collected and no new retry is started; the in-flight
attempt finishes, bounded by `drain_timeout` in `run_until_stopped`.

After each batch the dispatcher emits `llm_proxy.dispatcher.delivered` (what was acknowledged) and
`llm_proxy.dispatcher.failed` (what was dead-lettered or left pending) on its `Telemetry`; every
event of the batch is counted in exactly one of them (docs/telemetry.md).

Retries are bounded in time as well as in number: a message left unacknowledged for
`REDIS_STREAM_CLAIM_TIME` is handed to another consumer, so a batch is retried only while
`claim_time − flush_interval − DISPATCHER_TIMEOUT` has not passed; after that its failures are
dead-lettered like exhausted retries. Keep the claim time well above the retry schedule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from llm_proxy.bus import BusError, Delivery, Subscription
from llm_proxy.dispatcher.backoff import BackoffPolicy
from llm_proxy.dispatcher.delivery import RetryingSink, SplittingSink
from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.sinks import RecordError, Sink, SinkError, SinkPartialError, SinkRetryableError, per_record
from llm_proxy.events import Event
from llm_proxy.settings import DispatcherSettings
from llm_proxy.telemetry import Telemetry

POLL_SECONDS = 0.5
"""Longest single wait for messages, so a stop request is noticed quickly."""

DELIVERED = "llm_proxy.dispatcher.delivered"
FAILED = "llm_proxy.dispatcher.failed"
TRANSFORM_ERROR = "TransformError"
"""The `error` of `FAILED` for events the transformer raised on (its exception is in `message`)."""


@dataclass
class DispatcherStats:
    received: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    retried: int = 0
    """Records sent again after a retryable failure (each retry counts)."""
    left_pending: int = 0
    """Records left unacknowledged at shutdown or after a bus error; another consumer takes them."""
    transform_failed: int = 0
    batches: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    """Failed records by error class name (SinkRetryableError, SinkRejectedError, ...)."""
    last_delivery_at: datetime | None = None
    last_received_at: datetime | None = None
    last_error: str | None = None


@dataclass
class BatchOutcome:
    """Where the events of one batch ended, for the `DELIVERED` and `FAILED` telemetry events."""

    delivered: list[str] = field(default_factory=list)
    """Request ids of the events the sink confirmed and the bus acknowledged."""
    failed: dict[tuple[str, bool], tuple[str, list[str]]] = field(default_factory=dict)
    """(error class name, dead-lettered) → (the first such error's message, request ids)."""
    duration: float = 0.0
    retries: int = 0

    def fail(self, error: str, message: str, dead_lettered: bool, deliveries: Iterable[Delivery]) -> None:
        _, request_ids = self.failed.setdefault((error, dead_lettered), (message, []))
        request_ids.extend(delivery.event.request_id for delivery in deliveries)


class Dispatcher:
    def __init__(  # noqa: PLR0913 - the keyword-only ones are optional collaborators with defaults
            self, subscription: Subscription, sink: Sink, transform: Callable[[Event], SinkRecord],
            settings: DispatcherSettings, *, service: str = "", logger: logging.Logger | None = None,
            policy: BackoffPolicy | None = None, claim_time: float | None = None,
            telemetry: Telemetry | None = None) -> None:
        self.subscription = subscription
        self.sink = sink
        self.transform = transform
        self.settings = settings
        self.service = service
        self.logger = logger or logging.getLogger("llm_proxy.dispatcher")
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.stats = DispatcherStats()
        self._batch_retries = 0
        self.stopping = asyncio.Event()
        policy = policy or BackoffPolicy(settings.backoff_base, settings.backoff_max, settings.max_retries)
        self.delivery = RetryingSink(SplittingSink(sink, settings.batch_size), policy, stopping=self.stopping,
                                     on_retry=self._retrying, budget=self._retry_budget(claim_time))

    def _retry_budget(self, claim_time: float | None) -> float | None:
        """Retry only while the batch is safely ours: claim time − flush interval − one send."""
        if claim_time is None:
            return None
        budget = claim_time - self.settings.flush_interval - self.settings.send_timeout
        if budget < self.settings.backoff_base:
            self.logger.warning(
                "dispatcher: REDIS_STREAM_CLAIM_TIME (%.1fs) leaves no time to retry after the flush interval "
                "and one sink call (DISPATCHER_TIMEOUT %.1fs); failures will be dead-lettered at once",
                claim_time, self.settings.send_timeout)
        return max(budget, 0.0)

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Process batches until `stop()`; the last batch is finished, not abandoned."""
        while not self.stopping.is_set():
            batch = await self.collect()
            if batch:
                await self.process(batch)

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        """`run`, then on `stop` drain for at most `drain_timeout`; unconfirmed events stay pending."""
        task = asyncio.create_task(self.run(), name=f"dispatcher-{self.service}")
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        self.stop()
        waiter.cancel()
        try:
            await asyncio.wait_for(task, self.settings.drain_timeout)
        except TimeoutError:
            self.logger.warning("dispatcher: drain took longer than %.1fs; the unconfirmed batch stays "
                                "pending for another consumer", self.settings.drain_timeout)

    async def collect(self) -> list[Delivery]:
        batch: list[Delivery] = []
        seen: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = float("inf")
        while len(batch) < self.settings.batch_size and not self.stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            got = await self.subscription.receive(self.settings.batch_size - len(batch),
                                                  block=min(remaining, POLL_SECONDS))
            if got and not batch:
                deadline = loop.time() + self.settings.flush_interval
            fresh = [d for d in got if d.id not in seen]  # a message idle past the claim time comes back
            seen.update(d.id for d in fresh)
            batch += fresh
        if batch:
            self.stats.received += len(batch)
            self.stats.last_received_at = datetime.now(UTC)
        return batch

    async def process(self, batch: Sequence[Delivery]) -> None:
        outcome = BatchOutcome()
        owners, records = await self._transform(batch, outcome)
        if records:
            await self._deliver(owners, records, outcome)
        self._report(outcome)

    async def _deliver(self, owners: list[Delivery], records: list[SinkRecord], outcome: BatchOutcome) -> None:
        self.stats.batches += 1
        self._batch_retries = 0
        started = time.monotonic()
        failures: dict[int, RecordError] = {}
        try:
            await self.delivery.send(records)
        except SinkError as exc:
            failures = exc.failures if isinstance(exc, SinkPartialError) else per_record(exc, len(records))
        except Exception as exc:  # a sink bug: leave the batch to be redelivered (then dead-lettered)
            self.logger.exception("dispatcher: sink %s failed unexpectedly", self.service)
            self._note_left(len(records), f"{type(exc).__name__}: {exc}")
            outcome.fail(type(exc).__name__, str(exc), False, owners)
            return
        finally:
            outcome.duration = time.monotonic() - started
            outcome.retries = self._batch_retries
        await self._ack([owner for index, owner in enumerate(owners) if index not in failures], outcome)
        for index, error in sorted(failures.items()):
            await self._settle(owners[index], error, outcome)

    async def _transform(self, batch: Sequence[Delivery],
                         outcome: BatchOutcome) -> tuple[list[Delivery], list[SinkRecord]]:
        owners: list[Delivery] = []
        records: list[SinkRecord] = []
        for delivery in batch:
            try:
                record = self.transform(delivery.event)
            except Exception as exc:  # one odd event must not block the others: dead-letter it
                self.logger.exception("dispatcher: could not transform event %s", delivery.event.event_id)
                self.stats.transform_failed += 1
                problem = f"{type(exc).__name__}: {exc}"
                dead = await self._dead_letter(delivery, f"transform failed: {problem}")
                outcome.fail(TRANSFORM_ERROR, problem, dead, (delivery,))
                continue
            owners.append(delivery)
            records.append(record)
        return owners, records

    async def _ack(self, deliveries: list[Delivery], outcome: BatchOutcome) -> None:
        if not deliveries:
            return
        for attempt in range(3):
            try:
                await self.subscription.ack(deliveries)
            except BusError as exc:
                if attempt == 2:
                    self._note_left(len(deliveries), f"ack failed, will be delivered again: {exc}")
                    outcome.fail(type(exc).__name__, f"ack failed: {exc}", False, deliveries)
                    return
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                break
        self.stats.delivered += len(deliveries)
        self.stats.last_delivery_at = datetime.now(UTC)
        outcome.delivered.extend(delivery.event.request_id for delivery in deliveries)

    async def _settle(self, delivery: Delivery, error: RecordError, outcome: BatchOutcome) -> None:
        name = type(error).__name__
        self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
        self.stats.last_error = f"{self.service}: {error}"
        if isinstance(error, SinkRetryableError) and self.stopping.is_set():
            self._note_left(1, f"still failing at shutdown: {error}")
            outcome.fail(name, str(error), False, (delivery,))
            return
        dead = await self._dead_letter(delivery, f"{self.service} sink: {name}: {error}")
        outcome.fail(name, str(error), dead, (delivery,))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """True once the event is in the dead letters; False if it stays pending (the bus failed)."""
        try:
            await self.subscription.dead_letter(delivery, reason)
        except BusError as exc:
            self._note_left(1, f"dead-lettering failed, will be delivered again: {exc}")
            return False
        self.stats.dead_lettered += 1
        self.logger.warning("dispatcher: event %s dead-lettered: %s", delivery.event.event_id, reason)
        return True

    def _note_left(self, count: int, reason: str) -> None:
        self.stats.left_pending += count
        self.stats.last_error = reason
        self.logger.warning("dispatcher: %d events left unacknowledged: %s", count, reason)

    def _report(self, outcome: BatchOutcome) -> None:
        telemetry, sink = self.telemetry, type(self.sink).__name__
        if outcome.delivered and telemetry.has_handlers(DELIVERED):
            telemetry.execute(DELIVERED,
                              {"count": len(outcome.delivered), "duration": outcome.duration,
                               "retries": outcome.retries},
                              {"service": self.service, "sink": sink, "request_ids": outcome.delivered})
        if outcome.failed and telemetry.has_handlers(FAILED):
            for (error, dead_lettered), (message, request_ids) in outcome.failed.items():
                telemetry.execute(FAILED, {"count": len(request_ids)},
                                  {"service": self.service, "sink": sink, "error": error, "message": message,
                                   "dead_lettered": dead_lettered, "request_ids": request_ids})

    def _retrying(self, count: int, error: SinkError) -> None:
        self._batch_retries += 1
        self.stats.retried += count
        self.stats.last_error = f"{self.service}: {error}"
        self.logger.info("dispatcher: retrying %d records after: %s", count, error)
