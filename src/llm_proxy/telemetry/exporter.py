"""Span export: a bounded in-memory queue drained by a background asyncio task over OTLP/HTTP.

`submit`, on the request path, only appends a record of the call (call_spans.py) to a list; when
the queue is full the record is dropped and counted, never waited for. The task wakes every
`delay` seconds, or as soon as `batch_size` records wait, turns each batch into spans, encodes
them (otlp.py) and posts them with aiohttp, yielding to the event loop between batches.
429, 502, 503 and 504 answers and connection failures are retried a bounded number of times
(honouring `Retry-After`); any other failure drops the batch with a warning (at most one a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Generic, Protocol, TypeVar

import aiohttp

from llm_proxy.telemetry.otlp import ExportRequest

log = logging.getLogger("llm_proxy.tracing")

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 5
MAX_RETRY_DELAY = 30.0
_WARN_EVERY = 60.0
_ENCODE_SLICE = 32
R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


class SpanExporter(Protocol[R_contra]):
    """Where the records of ended calls go. `submit` is called on the request path and must never block."""

    loop: asyncio.AbstractEventLoop | None
    """The event loop the exporter works in, once something was submitted."""
    dropped: int
    """Records dropped since start, never exported (queue full, exporter unavailable)."""

    def submit(self, record: R_contra) -> None: ...

    def queued(self) -> int:
        """Records waiting to be exported (or handed on)."""

    async def flush(self) -> None:
        """Export everything submitted so far; returns when it was sent (or given up on)."""

    async def aclose(self) -> None:
        """Flush what is queued (bounded by the export timeout), then stop."""


class BatchingQueue(Generic[R]):
    """Records queued by `submit` (never waiting; dropped and counted when full) and drained in
    batches by a background task: as soon as `batch_size` wait, or every `delay` seconds."""

    def __init__(self, *, max_queue: int, batch_size: int, delay: float) -> None:
        self.max_queue, self.batch_size, self.delay = max_queue, batch_size, delay
        self.dropped = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[R] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False

    def queued(self) -> int:
        return len(self._queue)

    def submit(self, record: R) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue or self._closed:
            self.dropped += 1
            return
        queue.append(record)
        if self._task is None:
            self.loop = asyncio.get_running_loop()
            self._task = self.loop.create_task(self._run(), name="llm_proxy.tracing.export")
        elif len(queue) >= self.batch_size:
            self._wake.set()

    async def _drain(self, whole: bool) -> None:
        """Send what waits (full batches only, unless `whole`); called with the lock held."""
        raise NotImplementedError

    def _after_drain(self) -> None:
        """Called by the task after each drain (to report losses, say)."""

    async def _stop_task(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            waited = await self._wait_for_batch()
            try:
                async with self._lock:
                    await self._drain(waited)
            except Exception:  # a bug here must not stop tracing for the life of the worker
                log.exception("tracing: span export failed")
            self._after_drain()

    async def _wait_for_batch(self) -> bool:
        """False as soon as a full batch waits; True when `delay` passed first (then everything goes)."""
        if len(self._queue) >= self.batch_size:
            return False
        self._wake.clear()
        try:
            async with asyncio.timeout(self.delay):
                await self._wake.wait()
        except TimeoutError:
            return True
        return False


class OtlpHttpExporter(BatchingQueue[R]):
    """Exports records as OTLP/HTTP protobuf; `encode` makes the encoded spans of one record.

    Counts are of records (calls): `exported`, `dropped` (queue full), `failed` (not accepted).
    """

    def __init__(self, url: str, headers: dict[str, str], timeout: float, request: ExportRequest,
                 encode: Callable[[R], bytes], *, max_queue: int = 4096, batch_size: int = 512,
                 delay: float = 1.0) -> None:
        super().__init__(max_queue=max_queue, batch_size=batch_size, delay=delay)
        self.url = url
        self.headers = {**headers, "Content-Type": "application/x-protobuf"}
        self.timeout = timeout
        self.request = request
        self.encode = encode
        self.exported = self.failed = 0
        self._session: aiohttp.ClientSession | None = None
        self._warned = -_WARN_EVERY
        self._reported = (0, 0)

    async def flush(self) -> None:
        async with self._lock:
            await self._export_queued(retry=True)

    async def aclose(self) -> None:
        await self._stop_task()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout), self._lock:
                await self._export_queued(retry=False)
        if self._session is not None:
            await self._session.close()
        self._note_losses(" at shutdown")

    async def _drain(self, whole: bool) -> None:
        await self._export_queued(retry=True, whole=whole)

    def _after_drain(self) -> None:
        self._note_losses("")

    async def _export_queued(self, *, retry: bool, whole: bool = True) -> None:
        """Full batches only, unless `whole`: under load, what arrives meanwhile waits for its own batch."""
        queue = self._queue
        while queue and (whole or len(queue) >= self.batch_size):
            batch = queue[:self.batch_size]
            del queue[:self.batch_size]
            try:
                sent = await self._post(await self._encode(batch), retry=retry)
            except asyncio.CancelledError:
                queue[:0] = batch
                raise
            if sent:
                self.exported += len(batch)
            else:
                self.failed += len(batch)

    async def _encode(self, batch: list[R]) -> bytes:
        """The request body, made in slices with a yield between them so requests in flight are not held up."""
        encoded: list[bytes] = []
        for start in range(0, len(batch), _ENCODE_SLICE):
            with no_gc():
                encoded += map(self.encode, batch[start:start + _ENCODE_SLICE])
            await asyncio.sleep(0)
        return self.request(encoded)

    async def _post(self, body: bytes, *, retry: bool) -> bool:
        for attempt in range(MAX_ATTEMPTS if retry else 1):
            try:
                async with self._client().post(self.url, data=body, headers=self.headers) as resp:
                    await resp.read()
                    if resp.status < 300:
                        return True
                    if resp.status not in RETRYABLE_STATUSES:
                        self._warn(f"the collector answered {resp.status}")
                        return False
                    wait = retry_delay(resp.headers.get("Retry-After"), attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                wait = retry_delay(None, attempt)
                self._warn(f"export failed: {exc!r}")
            if retry and attempt + 1 < MAX_ATTEMPTS:
                await asyncio.sleep(wait)
        return False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    def _note_losses(self, when: str) -> None:
        losses = (self.dropped, self.failed)
        if losses != self._reported and self._warn(
                f"spans lost{when}: {self.dropped} dropped (queue full), "
                f"{self.failed} not accepted by the collector, since start", force=bool(when)):
            self._reported = losses

    def _warn(self, message: str, *, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._warned < _WARN_EVERY:
            return False
        self._warned = now
        log.warning("tracing: %s (%s)", message, self.url)
        return True


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """No garbage collection while a slice is encoded.

    Encoding allocates many short-lived containers (parsed bodies, lists of parts) that reference
    counting frees at once, and makes no cycles; left on, the collector would run every few
    records and each time walk (and age) every young object of the requests in flight.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def retry_delay(retry_after: str | None, attempt: int) -> float:
    """Seconds before the next try: the server's `Retry-After` if usable, else exponential with jitter."""
    seconds = None
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                seconds = parsedate_to_datetime(retry_after).timestamp() - time.time()
    if seconds is None:
        seconds = 0.5 * (1 << attempt) * random.uniform(0.8, 1.2)  # noqa: S311
    return min(max(seconds, 0.0), MAX_RETRY_DELAY)
