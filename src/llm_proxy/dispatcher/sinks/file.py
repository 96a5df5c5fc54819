"""FileSink: one JSON object per line, fsync'd per batch, rotated by size.

Each line is the event's wire format (usage and cost filled in, base64 bodies kept, so
`llm-proxy dispatcher replay --from` reads it back) plus `api`, `request` and `response`, the
decoded bodies. Rotation: before a batch would take the file past `max_bytes`, `path` becomes
`path.1` (`.1` → `.2`, ...; `backups` are kept) and a new file is started.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import orjson

from llm_proxy.dispatcher.record import SinkRecord, record_document
from llm_proxy.dispatcher.sinks import SinkRetryableError
from llm_proxy.errors import ConfigError
from llm_proxy.settings import Settings


class FileSink:
    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 0, backups: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        section = settings.dispatcher
        if not section.endpoint:
            raise ConfigError(["DISPATCHER_ENDPOINT: the file sink needs a path (--endpoint events.jsonl)"])
        return cls(section.endpoint, max_bytes=section.file_max_bytes, backups=section.file_backups)

    async def send(self, records: Sequence[SinkRecord]) -> None:
        if not records:
            return
        data = b"".join(orjson.dumps(record_document(record, raw_bodies=True)) + b"\n" for record in records)
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as exc:
                raise SinkRetryableError(f"writing {self.path} failed: {exc}") from exc

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._open()
        if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, self._size)  # no half line for the retry to append after
            raise
        self._size += len(data)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        if self.backups:
            for number in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{number + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    async def aclose(self) -> None:
        async with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
