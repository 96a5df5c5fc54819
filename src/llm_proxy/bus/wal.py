"""Write-ahead log of the Redis Streams bus: events on disk from the moment they are published.

The writer task sends queued events to Redis a batch at a time; without this log, a process
killed outright (SIGKILL, OOM killer) lost what was queued or in flight — some tens of events at
a few thousand requests per second. `publish` now appends each encoded event here first: one
`os.write` into the page cache (no fsync), which survives the death of the process (not of the
machine). When a batch is in Redis, or moved to the spool, the writer commits it: the log's
committed length goes into a small position file. At start, what a dead predecessor appended
and never committed is handed to the spool, which replays it in order — at least once: a batch
that reached Redis just before the kill is sent again (event ids make that harmless downstream).

Files, in the process's spool slot (so the slot's `flock` guards them too): `wal` (frames as in
the spool: `>II` length and CRC-32, then the payload) and `wal.pos` (the committed length, 8
bytes). When everything appended is committed and the log is past `rotate_bytes`, it is
truncated to zero. A torn frame at the end (killed mid-write) ends the recovery.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections import deque
from pathlib import Path

from llm_proxy.bus.spool import read_frames

_HEADER = struct.Struct(">II")
_POSITION = struct.Struct(">Q")


class WriteAheadLog:
    def __init__(self, *, rotate_bytes: int = 8 << 20, logger: logging.Logger | None = None) -> None:
        self.rotate_bytes = rotate_bytes
        self.logger = logger or logging.getLogger(__name__)
        self.broken = False
        """An append failed (disk full, say): no more appends until restart; the bus works on."""
        self._fd: int | None = None
        self._pos_fd: int | None = None
        self._sizes: deque[int] = deque()
        self._appended = self._committed = 0

    def open(self, directory: Path) -> list[bytes]:
        """Open the log in `directory`; return what a previous process left uncommitted, oldest first."""
        path, pos_path = directory / "wal", directory / "wal.pos"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._pos_fd = os.open(pos_path, os.O_RDWR | os.O_CREAT, 0o600)
        committed = os.pread(self._pos_fd, _POSITION.size, 0)
        start = _POSITION.unpack(committed)[0] if len(committed) == _POSITION.size else 0
        left: list[bytes] = []
        if os.fstat(self._fd).st_size > start:
            left = read_frames(path, self.logger, start=start)
        self._reset()
        if left:
            self.logger.warning("event bus: %d events of a process that stopped before sending them are "
                                "replayed from %s", len(left), path)
        return left

    def append(self, payload: bytes) -> None:
        if self._fd is None or self.broken:
            return
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            os.write(self._fd, frame)
        except OSError as exc:
            self.broken = True
            self.logger.warning("event bus: write-ahead log disabled until restart, writing failed: %s", exc)
            return
        self._sizes.append(len(frame))
        self._appended += len(frame)

    def commit(self, count: int) -> None:
        """The `count` oldest uncommitted events are in Redis or in the spool."""
        sizes = self._sizes
        for _ in range(min(count, len(sizes))):
            self._committed += sizes.popleft()
        if self._pos_fd is None or self.broken:
            return
        try:
            if self._committed == self._appended and self._appended >= self.rotate_bytes:
                self._reset()
            else:
                os.pwrite(self._pos_fd, _POSITION.pack(self._committed), 0)
        except OSError as exc:
            self.broken = True
            self.logger.warning("event bus: write-ahead log disabled until restart, commit failed: %s", exc)

    def close(self) -> None:
        for fd in (self._fd, self._pos_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._pos_fd = None

    def _reset(self) -> None:
        assert self._fd is not None
        assert self._pos_fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._pos_fd, _POSITION.pack(0), 0)
        self._sizes.clear()
        self._appended = self._committed = 0
