"""Delivery policy as wrappers around any `Sink`: splitting and retrying.

`RetryingSink(SplittingSink(sink, n), policy)` is what the dispatcher sends through. Both keep
the `Sink` contract: they return when every record was confirmed, else raise
`SinkPartialError` with the index of each record that was not, in the batch they were given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from llm_proxy.dispatcher.backoff import BackoffPolicy
from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.sinks import (
    RecordError,
    Sink,
    SinkError,
    SinkPartialError,
    SinkRejectedError,
    SinkRetryableError,
    SinkTooLargeError,
    per_record,
)


class SplittingSink:
    """Sends at most `max_records` per call and halves a call the service found too large.

    A record too large even alone is rejected. After a whole-call retryable failure (the
    service is down) the rest of the batch is not tried; it fails with the same error.
    """

    def __init__(self, sink: Sink, max_records: int) -> None:
        self.sink = sink
        self.max_records = max(1, max_records)

    async def send(self, records: Sequence[SinkRecord]) -> None:
        failures: dict[int, RecordError] = {}
        chunks = [list(range(start, min(start + self.max_records, len(records))))
                  for start in range(0, len(records), self.max_records)]
        for number, chunk in enumerate(chunks):
            outage = await self._send(records, chunk, failures)
            if outage is not None:
                for later in chunks[number + 1:]:
                    failures.update(dict.fromkeys(later, outage))
                break
        if failures:
            raise SinkPartialError(failures)

    async def _send(self, records: Sequence[SinkRecord], indexes: list[int],
                    failures: dict[int, RecordError]) -> SinkRetryableError | None:
        try:
            await self.sink.send([records[i] for i in indexes])
        except SinkTooLargeError as exc:
            if len(indexes) == 1:
                failures[indexes[0]] = SinkRejectedError(f"too large for the service even alone: {exc}")
                return None
            middle = len(indexes) // 2
            outage = await self._send(records, indexes[:middle], failures)
            if outage is not None:
                failures.update(dict.fromkeys(indexes[middle:], outage))
                return outage
            return await self._send(records, indexes[middle:], failures)
        except SinkError as exc:
            for local, error in per_record(exc, len(indexes)).items():
                if isinstance(error, SinkTooLargeError):
                    failures[indexes[local]] = SinkRejectedError(f"too large for the service: {error}")
                else:
                    failures[indexes[local]] = error
            if isinstance(exc, SinkRetryableError):
                return exc
        return None

    async def aclose(self) -> None:
        await self.sink.aclose()


class RetryingSink:
    """Re-sends the records that failed with a retryable error, waiting per `policy`.

    Only the failed records are sent again, never those already confirmed. Retries stop when
    `policy.max_retries` is reached, when the next one would start after `budget` seconds, or
    when `stopping` is set (shutdown drains: no new attempt is started); the records still
    failing are then raised as retryable, rejected ones as rejected.
    """

    def __init__(self, sink: Sink, policy: BackoffPolicy, *, stopping: asyncio.Event | None = None,
                 on_retry: Callable[[int, SinkError], None] | None = None, budget: float | None = None) -> None:
        self.sink = sink
        self.policy = policy
        self.stopping = stopping or asyncio.Event()
        self.on_retry = on_retry
        self.budget = budget
        """Seconds after which no retry is started (the bus hands unacknowledged messages to another
        consumer after its claim time, so retrying longer would deliver them twice)."""

    async def send(self, records: Sequence[SinkRecord]) -> None:
        pending = list(range(len(records)))
        failures: dict[int, RecordError] = {}
        deadline = asyncio.get_running_loop().time() + (self.budget if self.budget is not None else float("inf"))
        for attempt in range(self.policy.max_retries + 1):
            retry, retry_after = self._sort(await self._attempt(records, pending), pending, failures)
            if not retry or self.stopping.is_set():
                break
            wait = self.policy.delay(attempt, retry_after)
            if attempt == self.policy.max_retries or asyncio.get_running_loop().time() + wait > deadline:
                for index in retry:
                    failures[index] = SinkRetryableError(f"{failures[index]} (gave up after {attempt + 1} attempts)")
                break
            if self.on_retry is not None:
                self.on_retry(len(retry), failures[retry[0]])
            if await self._stopped_during(wait):
                break
            for index in retry:
                del failures[index]
            pending = retry
        if failures:
            raise SinkPartialError(failures)

    async def _attempt(self, records: Sequence[SinkRecord], pending: list[int]) -> dict[int, RecordError]:
        try:
            await self.sink.send([records[i] for i in pending])
        except SinkError as exc:
            return per_record(exc, len(pending))
        return {}

    @staticmethod
    def _sort(errors: dict[int, RecordError], pending: list[int],
              failures: dict[int, RecordError]) -> tuple[list[int], float | None]:
        retry: list[int] = []
        retry_after: float | None = None
        for local, error in errors.items():
            index = pending[local]
            failures[index] = error
            if isinstance(error, SinkRetryableError):
                retry.append(index)
                if error.retry_after is not None:
                    retry_after = max(retry_after or 0.0, error.retry_after)
        return sorted(retry), retry_after

    async def _stopped_during(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        await self.sink.aclose()
