"""AuditRecorder: management actions and proxy denials → JSONL audit file and the AuditStore.

`record` only builds an entry and enqueues it, so a request never waits on a disk or a database.
One background task writes what is queued in batches: the file first (one write and one fsync per
batch), then the database. A failing destination is logged and skipped; it never raises into the
caller and never stops the other destination. `aclose` drains the queue before it returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import IO, Any

import orjson

from llm_proxy.clock import Clock, new_id
from llm_proxy.errors import StorageError
from llm_proxy.records import AuditEntry
from llm_proxy.settings import AuditSettings
from llm_proxy.storage import AuditStore

OUTCOMES = frozenset({"success", "failure", "denied", "error"})
BATCH_SIZE = 256
DEFAULT_QUEUE_SIZE = 10_000

# Column widths of audit_events; longer values are cut so an insert never fails on them.
_LIMITS = {"action": 255, "actor": 255, "project_id": 191, "request_id": 191,
           "correlation_id": 191, "client_ip": 64, "method": 16, "token_id": 191}


def _clip(name: str, value: str | None) -> str | None:
    return value[: _LIMITS[name]] if value is not None else None


def audit_line(entry: AuditEntry) -> bytes:
    """One JSONL line in the predecessor's format (request fields live under `details`)."""
    details: dict[str, Any] = dict(entry.details)
    for key, value in (("http_method", entry.method), ("endpoint", entry.path),
                       ("user_agent", entry.user_agent), ("reason", entry.reason),
                       ("token_id", entry.token_id)):
        if value is not None:
            details[key] = value
    doc: dict[str, Any] = {"timestamp": entry.timestamp, "id": entry.id, "action": entry.action,
                           "actor": entry.actor}
    for key in ("project_id", "request_id", "correlation_id", "client_ip"):
        if (value := getattr(entry, key)) is not None:
            doc[key] = value
    doc["result"] = entry.outcome
    if details:
        doc["details"] = details
    options = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
    return orjson.dumps(doc, default=str, option=options)


class AuditRecorder:
    """Records audit entries without blocking; see the module docstring for the delivery rules."""

    def __init__(
        self,
        settings: AuditSettings,
        store: AuditStore | None,
        clock: Clock,
        logger: logging.Logger | None = None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self._path = settings.log_file if settings.enabled else ""
        self._create_dir = settings.create_dir
        self._store = store if settings.enabled and settings.store_in_db else None
        self._clock = clock
        self._log = logger or logging.getLogger("llm_proxy.audit")
        self._queue: asyncio.Queue[AuditEntry] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._file: IO[bytes] | None = None
        self._closed = False
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return bool(self._path) or self._store is not None

    @property
    def queryable(self) -> bool:
        """Whether entries reach the database, so that `GET /manage/audit` can show them."""
        return self._store is not None

    def record(  # noqa: PLR0913 - the audit fields are keyword-only and each is optional
        self,
        action: str,
        actor: str,
        outcome: str,
        *,
        project_id: str | None = None,
        request_id: str | None = None,
        correlation_id: str | None = None,
        client_ip: str | None = None,
        method: str | None = None,
        path: str | None = None,
        user_agent: str | None = None,
        reason: str | None = None,
        token_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Enqueue one entry; `reason` defaults to details["reason"]. Never raises, never waits."""
        if not self.enabled:
            return
        if outcome not in OUTCOMES:
            self._log.warning("audit outcome %r is not one of %s; recorded as error",
                              outcome, sorted(OUTCOMES))
            outcome = "error"
        extra = dict(details or {})
        if reason is None and isinstance(extra.get("reason"), str):
            reason = extra["reason"]
        entry = AuditEntry(
            id=new_id(), timestamp=self._clock.now(), action=_clip("action", action) or "",
            actor=_clip("actor", actor) or "", outcome=outcome,
            project_id=_clip("project_id", project_id), request_id=_clip("request_id", request_id),
            correlation_id=_clip("correlation_id", correlation_id),
            client_ip=_clip("client_ip", client_ip), method=_clip("method", method), path=path,
            user_agent=user_agent, reason=reason, token_id=_clip("token_id", token_id),
            details=extra,
        )
        self._enqueue(entry)

    def _enqueue(self, entry: AuditEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1
            self._log.error("audit queue full; dropped %s entry (%d dropped so far)",
                            entry.action, self.dropped)
            return
        if self._task is None and not self._closed:
            self._start_if_running()

    def _start_if_running(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = asyncio.create_task(self._run(), name="audit-recorder")

    async def start(self) -> None:
        if self._task is None and self.enabled:
            self._start_if_running()

    async def flush(self) -> None:
        """Wait until everything recorded so far has been written (or failed and been logged)."""
        if self._task is None:
            await self._write_pending()
            return
        await self._queue.join()

    async def aclose(self) -> None:
        self._closed = True
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            batch.extend(self._take(BATCH_SIZE - 1))
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_pending(self) -> None:
        while batch := self._take(BATCH_SIZE):
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _take(self, limit: int) -> list[AuditEntry]:
        taken: list[AuditEntry] = []
        while len(taken) < limit:
            try:
                taken.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return taken

    async def _write(self, batch: list[AuditEntry]) -> None:
        if self._path:
            await self._write_file(batch)
        if self._store is not None:
            await self._write_store(self._store, batch)

    async def _write_file(self, batch: list[AuditEntry]) -> None:
        lines: list[bytes] = []
        for entry in batch:
            try:
                lines.append(audit_line(entry))
            except (TypeError, ValueError) as exc:
                self._log.error("audit entry %s could not be serialised: %s", entry.action, exc)
        try:
            await asyncio.to_thread(self._append, b"".join(lines))
        except OSError as exc:
            self._log.error("audit: failed to write %d entries to %s: %s",
                            len(lines), self._path, exc)

    def _append(self, data: bytes) -> None:
        if self._file is None:
            directory = os.path.dirname(self._path)
            if directory and self._create_dir:
                os.makedirs(directory, exist_ok=True)
            self._file = open(self._path, "ab")  # noqa: SIM115 - kept open across batches
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:
            # Reopen on the next batch: the file may have been rotated or its disk remounted.
            self._file.close()
            self._file = None
            raise

    async def _write_store(self, store: AuditStore, batch: list[AuditEntry]) -> None:
        for entry in batch:
            try:
                await store.append(entry)
            except StorageError as exc:
                self._log.error("audit: failed to store %s event in database: %s", entry.action, exc)
            except Exception:  # boundary: a bad row must not stop the rest of the batch
                self._log.exception("audit: unexpected error storing %s event", entry.action)
