"""Write-ahead log of the Redis Streams bus: events on disk from the moment they are published.

The writer task sends queued events to Redis a batch at a time; without this log, a process
killed outright (SIGKILL, OOM killer) lost what was queued or in flight — some tens of events at
a few thousand requests per second. `publish` now appends each encoded event here first: one
`os.write` into the page cache (no fsync), which survives the death of the process (not of the
machine). When a batch is in Redis, or moved to the spool, the writer commits it: the position of
the oldest uncommitted event goes into a small position file. At start, what a dead predecessor
appended and never committed is handed to the spool, which replays it in order — at least once:
a batch that reached Redis just before the kill is sent again (event ids make that harmless).

Files, in the process's spool slot (so the slot's `flock` guards them too): segments
`wal-<12-digit sequence>` (frames as in the spool: `>II` length and CRC-32, then the payload) and
`wal.pos` (sequence and offset of the oldest uncommitted frame, 16 bytes). A new segment starts
once the current one passes `segment_bytes`; a segment is deleted as soon as all its events are
committed, so the log stays about one segment long under any steady load. A torn frame at the end
(killed mid-write) ends the recovery of its segment.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections import deque
from pathlib import Path

from llm_proxy.bus.spool import read_frames

_HEADER = struct.Struct(">II")
_POSITION = struct.Struct(">QQ")
_NAME = re.compile(r"^wal-(\d{12})$")


class WriteAheadLog:
    def __init__(self, *, segment_bytes: int = 4 << 20, logger: logging.Logger | None = None) -> None:
        self.segment_bytes = segment_bytes
        self.logger = logger or logging.getLogger(__name__)
        self.broken = False
        """An append or commit failed (disk full, say): the log is off until restart; the bus works on."""
        self.directory: Path | None = None
        self._fd: int | None = None
        self._pos_fd: int | None = None
        self._seq = 0
        self._size = 0
        self._frames: deque[tuple[int, int]] = deque()
        """(segment, size) of each uncommitted frame, oldest first."""
        self._front = (0, 0)
        """Segment and offset of the oldest uncommitted frame."""

    def open(self, directory: Path) -> list[bytes]:
        """Open the log in `directory`; return what a previous process left uncommitted, oldest first."""
        self.directory = directory
        self._pos_fd = os.open(directory / "wal.pos", os.O_RDWR | os.O_CREAT, 0o600)
        raw = os.pread(self._pos_fd, _POSITION.size, 0)
        first_seq, offset = _POSITION.unpack(raw) if len(raw) == _POSITION.size else (0, 0)
        segments = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)))
        left: list[bytes] = []
        for seq, path in segments:
            if seq >= first_seq:
                left += read_frames(path, self.logger, start=offset if seq == first_seq else 0)
            path.unlink()
        self._seq = segments[-1][0] if segments else 0
        self._new_segment()
        if left:
            self.logger.warning("event bus: %d events of a process that stopped before sending them are "
                                "replayed from %s", len(left), directory)
        return left

    def append(self, payload: bytes) -> None:
        if self._fd is None or self.broken:
            return
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            if self._size >= self.segment_bytes:
                self._new_segment()
            os.write(self._fd, frame)
        except OSError as exc:
            self._break(f"writing failed: {exc}")
            return
        self._frames.append((self._seq, len(frame)))
        self._size += len(frame)

    def commit(self, count: int) -> None:
        """The `count` oldest uncommitted events are in Redis or in the spool."""
        if not count or self._pos_fd is None or self.broken:
            return
        frames = self._frames
        seq, offset = self._front
        for _ in range(min(count, len(frames))):
            frame_seq, size = frames.popleft()
            if frame_seq != seq:
                seq, offset = frame_seq, 0
            offset += size
        if frames and frames[0][0] != seq:
            seq, offset = frames[0][0], 0
        elif not frames:
            seq, offset = self._seq, self._size
        try:
            os.pwrite(self._pos_fd, _POSITION.pack(seq, offset), 0)
            self._delete_segments(self._front[0], seq)
        except OSError as exc:
            self._break(f"commit failed: {exc}")
            return
        self._front = (seq, offset)

    def close(self) -> None:
        for fd in (self._fd, self._pos_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._pos_fd = None

    def _new_segment(self) -> None:
        assert self.directory is not None
        if self._fd is not None:
            os.close(self._fd)
        self._seq += 1
        self._fd = os.open(self._segment_path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        if not self._frames:  # nothing uncommitted: the front moves to the new segment at once
            old, self._front = self._front[0], (self._seq, 0)
            assert self._pos_fd is not None
            os.pwrite(self._pos_fd, _POSITION.pack(self._seq, 0), 0)
            self._delete_segments(old, self._seq)

    def _delete_segments(self, first: int, end: int) -> None:
        """Segments `first` to `end` (excluded): every event in them is committed."""
        for seq in range(first, end):
            self._segment_path(seq).unlink(missing_ok=True)

    def _segment_path(self, seq: int) -> Path:
        assert self.directory is not None
        return self.directory / f"wal-{seq:012d}"

    def _break(self, why: str) -> None:
        self.broken = True
        self.logger.warning("event bus: write-ahead log off until restart, %s", why)
