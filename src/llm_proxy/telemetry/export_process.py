"""Span export in a child process: the worker only hands call records over a pipe.

Encoding a call's spans as protobuf costs a proxy worker about as much CPU as recording them,
so by default (`LLM_PROXY_TRACE_EXPORT_PROCESS=true`) each worker starts one exporter child,
`python -m llm_proxy.telemetry.export_process`, and writes its records to the child's stdin in
batches (a few hundred records per write). The child runs the same
`OtlpHttpExporter` as the in-process mode (queue, batches, retries, counted losses), so spans,
limits and log lines are the same either way; the worker's event loop never encodes or posts.

Frames on the pipe: one kind byte, a 4-byte big-endian length, the payload.
`S` (first, once) the JSON spec: tracing and log settings and the upstream URL — on the pipe
rather than in argv, where OTLP header secrets would show in `ps`; `P` records packed by the C
extension (`_records.c`: the worker builds each call's record packed, without a tuple), one after
another, or, where the extension was not built, `R` a marshalled list of records; `F` a flush
request whose payload the child writes back as one line on stdout once everything before it was
exported (or given up on).

The child lowers its own CPU priority (`LLM_PROXY_TRACE_EXPORT_PRIORITY`, `idle` by default: a
SCHED_IDLE process only runs on CPU time no other process wants), so exporting never takes CPU
from requests; on a machine that is busy all the time its records wait, then are dropped.

Failure handling: records wait in a bounded queue in the worker; when the pipe is backed up or
the child is gone they are dropped and counted, never waited for. A child that exits is started
again on the next batch, at most once per `RESTART_INTERVAL`. When the worker stops, it sends
what is queued and closes the pipe; the child exports what it holds and exits, and is killed
if it takes longer than the export timeout plus a margin. A worker killed outright closes the
pipe all the same, so its child flushes and exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import marshal
import os
import signal
import struct
import sys
import time
from typing import Any

import orjson

from llm_proxy.bus.lograte import RateLimitedLog
from llm_proxy.settings import LogSettings, TracingSettings
from llm_proxy.telemetry.call_spans import NATIVE
from llm_proxy.telemetry.exporter import BatchingQueue, no_gc

log = logging.getLogger("llm_proxy.tracing")

RESTART_INTERVAL = 5.0
LOW_PRIORITY_NICENESS = 10
MARSHAL_VERSION = 2
"""Without the back-references of versions 3 and 4, which cost a hash-table entry per object written."""
MAX_BACKLOG_BYTES = 8 * 1024 * 1024
"""Bytes written to the child and not yet read by it, above which batches are dropped."""
_HEADER = struct.Struct(">cI")
_SPEC, _RECORDS, _PACKED, _FLUSH = b"S", b"R", b"P", b"F"


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


class ProcessSpanExporter(BatchingQueue[Any]):
    """A `SpanExporter` whose records are encoded and posted by a child process (see module doc).

    Records are tuples; with `packed`, also the bytes of `_spans.pack_call` (tuples are packed at hand-over).
    Counts, in the worker: `sent` (records written to the child) and `dropped` (queue full,
    pipe backed up, child gone). What the collector accepted is counted and logged by the child.
    """

    def __init__(self, tracing: TracingSettings, log_settings: LogSettings, upstream_url: str, *,
                 max_queue: int = 4096, batch_size: int = 256, delay: float = 0.2, packed: bool = False) -> None:
        self.packed = packed
        self.spec = orjson.dumps({"tracing": dataclasses.asdict(tracing), "log": dataclasses.asdict(log_settings),
                                  "upstream_url": upstream_url})
        super().__init__(max_queue=max_queue, batch_size=batch_size, delay=delay)
        self.timeout = tracing.timeout
        self.sent = 0
        self._child: asyncio.subprocess.Process | None = None
        self._started_at = -RESTART_INTERVAL
        self._flushes = 0
        self._problems = RateLimitedLog(log, interval=60.0)

    async def flush(self) -> None:
        """Hand over what is queued, then wait until the child exported everything it holds."""
        async with self._lock:
            await self._hand_over()
            child = self._child
            if child is None or child.returncode is not None or child.stdin is None or child.stdout is None:
                return
            self._flushes += 1
            token = str(self._flushes).encode()
            with contextlib.suppress(ConnectionError, TimeoutError):
                child.stdin.write(frame(_FLUSH, token))
                async with asyncio.timeout(self.timeout * 6 + 5):
                    while (await child.stdout.readline()).strip() not in (token, b""):
                        pass

    async def aclose(self) -> None:
        await self._stop_task()
        async with self._lock:
            await self._hand_over()
            await self._stop_child()
        if self.dropped:
            log.warning("tracing: spans lost: %d dropped in the worker (queue full or exporter process "
                        "unavailable) since start", self.dropped)

    async def _drain(self, whole: bool) -> None:
        await self._hand_over()

    async def _hand_over(self) -> None:
        queue = self._queue
        while queue:
            child = await self._ready_child()  # before taking the batch: a cancel here loses nothing
            batch = queue[:self.batch_size]
            del queue[:self.batch_size]
            if child is None or child.stdin is None or child.stdin.is_closing():
                self._lose(len(batch), "the exporter process is not running")
                continue
            if child.stdin.transport.get_write_buffer_size() > MAX_BACKLOG_BYTES:
                self._lose(len(batch), "the exporter process is not keeping up")
                continue
            try:
                child.stdin.write(frame(_PACKED, _packed(batch)) if self.packed
                                  else frame(_RECORDS, marshal.dumps(batch, MARSHAL_VERSION)))
            except (ConnectionError, RuntimeError) as exc:
                self._lose(len(batch), f"the exporter process went away ({exc!r})")
                continue
            self.sent += len(batch)
            await asyncio.sleep(0)

    async def _ready_child(self) -> asyncio.subprocess.Process | None:
        child = self._child
        if child is not None and child.returncode is None:
            return child
        if child is not None:
            self._warn(f"the exporter process exited with status {child.returncode}")
            self._child = None
        now = time.monotonic()
        if now - self._started_at < RESTART_INTERVAL:
            return None
        self._started_at = now
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llm_proxy.telemetry.export_process",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        except OSError as exc:
            self._warn(f"could not start the exporter process: {exc!r}")
            return None
        except asyncio.CancelledError:
            self._started_at = -RESTART_INTERVAL  # not a failed start: shutdown may start one at once
            raise
        assert child.stdin is not None
        child.stdin.write(frame(_SPEC, self.spec))
        self._child = child
        return child

    async def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                child.stdin.write_eof()
        try:
            async with asyncio.timeout(self.timeout + 5.0):
                await child.wait()
        except TimeoutError:
            log.warning("tracing: the exporter process did not finish in time and was killed")
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()

    def _lose(self, count: int, why: str) -> None:
        self.dropped += count
        self._warn(f"{count} spans dropped: {why}")

    def _warn(self, message: str) -> None:
        self._problems.warning("tracing: %s (%d dropped since start)", message, self.dropped)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        kind, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        return kind, await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None


def _packed(batch: list[Any]) -> bytes:
    assert NATIVE is not None, "packed records need the C extension"
    return b"".join([record if record.__class__ is bytes else NATIVE.pack(record) for record in batch])


def _read_records(kind: bytes, payload: bytes) -> list[Any]:
    if kind == _RECORDS:
        records: list[Any] = marshal.loads(payload)  # noqa: S302 - written by our own worker, on a private pipe
        return records
    if NATIVE is None:
        raise RuntimeError("packed records, but the C extension is not built in this process")
    return NATIVE.unpack(payload)  # type: ignore[no-any-return]


def lower_priority(priority: str) -> None:
    """The child's CPU priority (`LLM_PROXY_TRACE_EXPORT_PRIORITY`); kept as it is where the system refuses."""
    try:
        if priority == "idle" and hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif priority == "idle":
            os.nice(19)
        elif priority == "low":
            os.nice(LOW_PRIORITY_NICENESS)
    except OSError as exc:
        log.warning("tracing: the exporter process keeps its CPU priority (%r)", exc)


async def _serve_pipe() -> int:
    """The child: read the spec, then records and flush requests, until the worker closes the pipe."""
    from llm_proxy.telemetry.logs import configure_logging
    from llm_proxy.telemetry.tracing import build_otlp_exporter

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 31)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    first = await _read_frame(reader)
    if first is None or first[0] != _SPEC:
        print("llm-proxy export process: expected the spec frame on stdin", file=sys.stderr)
        return 2
    spec = orjson.loads(first[1])
    configure_logging(LogSettings(**spec["log"]))
    tracing = TracingSettings(**spec["tracing"])
    lower_priority(tracing.export_priority)
    exporter = build_otlp_exporter(tracing, spec["upstream_url"])
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which closes the pipe
    frames = asyncio.ensure_future(_read_frame(reader))
    try:
        while True:
            stop = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({frames, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not frames.done():
                break
            item = frames.result()
            if item is None:
                break
            kind, payload = item
            if kind in (_RECORDS, _PACKED):
                with no_gc():  # a batch is hundreds of tuples: left on, the collector would run every few records
                    records = _read_records(kind, payload)
                for record in records:
                    exporter.submit(record)
            elif kind == _FLUSH:
                await exporter.flush()
                sys.stdout.buffer.write(payload + b"\n")
                sys.stdout.buffer.flush()
            frames = asyncio.ensure_future(_read_frame(reader))
    finally:
        frames.cancel()
        await exporter.aclose()
    return 0


def main() -> None:
    import uvloop

    sys.exit(uvloop.run(_serve_pipe()))


if __name__ == "__main__":
    main()
