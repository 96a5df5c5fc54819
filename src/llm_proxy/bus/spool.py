"""Spool: an append-only directory of encoded events waiting for Redis.

Layout: `EVENT_SPOOL_DIR/slot-<n>/seg-<12-digit sequence>.spool`, oldest first. Each process
holds an exclusive `flock` on one slot (the first free one), so the worker processes of one host
can share the directory; the lock dies with its process, and the next process to take the slot
replays what was left in it. `max_bytes` bounds each slot. Each holds frames of
`>II` (payload length, CRC-32 of the payload) followed by the payload. A process appends only to
a segment it created itself, so segments left by a previous process are read-only and replayed
first. A segment is deleted only after all its frames were written to Redis; if the process dies
between the write and the deletion, the next start writes those frames again (at least once).

Appends are plain `os.write` calls on the event loop's thread (page cache, no fsync); `sync()`
fsyncs in a worker thread, so the bus calls it once per batch. The directory is bounded by
`max_bytes`: an append that does not fit is refused and the caller counts the drop. A torn or
corrupt frame (crash during a write) ends its segment; the frames before it are kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

_HEADER = struct.Struct(">II")
_NAME = re.compile(r"^seg-(\d{12})\.spool$")
_MAX_SLOTS = 1024


def read_frames(path: Path, logger: logging.Logger | None = None, *, start: int = 0) -> list[bytes]:
    data = path.read_bytes()
    frames, offset = [], start
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        payload = data[start:end]
        if end > len(data) or zlib.crc32(payload) != crc:
            break
        frames.append(payload)
        offset = end
    if offset != len(data) and logger is not None:
        logger.warning("event spool: %s has a torn or corrupt frame at byte %d; "
                       "%d bytes after it are skipped", path, offset, len(data) - offset)
    return frames


class Spool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, *,
                 segment_bytes: int = 1 << 20, logger: logging.Logger | None = None) -> None:
        self.root = Path(directory)
        self.directory = self.root
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.logger = logger or logging.getLogger(__name__)
        self._segments: list[tuple[Path, int]] = []
        self._fd: int | None = None
        self._fd_size = 0
        self._unsynced: list[int] = []
        self._dirty = False
        self._sync_lock = asyncio.Lock()
        self._next_seq = 1
        self._bytes = 0
        self._frames: list[bytes] | None = None
        self._cursor = 0
        self._lock_fd: int | None = None

    @property
    def size(self) -> int:
        return self._bytes

    @property
    def pending(self) -> bool:
        return bool(self._segments)

    def open(self) -> None:
        """Take a free slot and adopt the segments a previous process left in it."""
        self.directory = self._take_slot()
        found = sorted((int(m.group(1)), p) for p in self.directory.iterdir()
                       if (m := _NAME.match(p.name)))
        self._segments = [(p, p.stat().st_size) for _, p in found]
        self._bytes = sum(size for _, size in self._segments)
        self._next_seq = found[-1][0] + 1 if found else 1
        if self._segments:
            self.logger.info("event spool: %d segments (%d bytes) left to replay in %s",
                             len(self._segments), self._bytes, self.directory)

    def _take_slot(self) -> Path:
        for slot in range(_MAX_SLOTS):
            path = self.root / f"slot-{slot}"
            path.mkdir(parents=True, exist_ok=True)
            if sys.platform == "win32":
                return path
            import fcntl

            fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._lock_fd = fd
            return path
        raise OSError(f"event spool: all {_MAX_SLOTS} slots of {self.root} are in use")

    def append(self, payloads: Sequence[bytes]) -> int:
        """Append frames in order; return how many fit (the rest are the caller's drops)."""
        written = 0
        for payload in payloads:
            frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
            if self._bytes + len(frame) > self.max_bytes:
                break
            fd = self._fd if self._fd is not None else self._new_segment()
            os.write(fd, frame)
            self._dirty = True
            self._fd_size += len(frame)
            self._bytes += len(frame)
            path, size = self._segments[-1]
            self._segments[-1] = (path, size + len(frame))
            written += 1
            if self._fd_size >= self.segment_bytes:
                self._seal()
        return written

    def _new_segment(self) -> int:
        path = self.directory / f"seg-{self._next_seq:012d}.spool"
        self._next_seq += 1
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fd_size = 0
        self._segments.append((path, 0))
        return self._fd

    def _seal(self) -> None:
        """Stop appending to the current segment; `sync` fsyncs and closes it."""
        if self._fd is not None:
            self._unsynced.append(self._fd)
            self._fd = None
            self._dirty = True

    async def sync(self) -> None:
        """Make every append so far durable (fsync in a worker thread)."""
        if not self._dirty:
            return
        async with self._sync_lock:
            self._dirty = False
            sealed = list(self._unsynced)
            fds = sealed + ([self._fd] if self._fd is not None else [])
            try:
                await asyncio.to_thread(_fsync_all, fds)
            except BaseException:
                self._dirty = True
                raise
            for fd in sealed:
                self._unsynced.remove(fd)
                os.close(fd)

    async def peek(self, limit: int) -> list[bytes]:
        """Up to `limit` frames from the front of the spool, not yet removed."""
        if not self._segments:
            return []
        if self._frames is None:
            path = self._segments[0][0]
            if self._fd is not None and len(self._segments) == 1:
                self._seal()
            self._frames = await asyncio.to_thread(read_frames, path, self.logger)
            self._cursor = 0
            if not self._frames:
                self._drop_front()
                return await self.peek(limit)
        return self._frames[self._cursor:self._cursor + limit]

    def advance(self, count: int) -> None:
        """Forget `count` frames returned by `peek`: they are safely in Redis."""
        assert self._frames is not None
        self._cursor += count
        if self._cursor >= len(self._frames):
            self._drop_front()

    def _drop_front(self) -> None:
        path, size = self._segments.pop(0)
        self._frames, self._cursor = None, 0
        self._bytes -= size
        path.unlink(missing_ok=True)

    async def aclose(self) -> None:
        self._seal()
        await self.sync()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _fsync_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.fsync(fd)
