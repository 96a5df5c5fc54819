"""The write-ahead log of the Redis Streams bus: what a killed process appended comes back once."""

from __future__ import annotations

import os
from pathlib import Path

from llm_proxy.bus.wal import WriteAheadLog


def opened(directory: Path, segment_bytes: int = 1 << 20) -> tuple[WriteAheadLog, list[bytes]]:
    wal = WriteAheadLog(segment_bytes=segment_bytes)
    return wal, wal.open(directory)


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("wal-*"))


def test_uncommitted_events_come_back_in_order_once(tmp_path: Path) -> None:
    wal, left = opened(tmp_path)
    assert left == []
    for i in range(5):
        wal.append(b"event-%d" % i)
    wal.commit(2)  # the first two reached Redis; then the process is killed (no close)
    again, left = opened(tmp_path)
    assert left == [b"event-2", b"event-3", b"event-4"]
    assert opened(tmp_path)[1] == []  # handed over once: the next start finds nothing
    wal.close()
    again.close()


def test_under_steady_load_committed_segments_are_deleted(tmp_path: Path) -> None:
    wal, _ = opened(tmp_path, segment_bytes=100)
    for i in range(200):  # always a few uncommitted events behind: the log never empties
        wal.append(b"%03d" % i + b"x" * 17)
        if i >= 3:
            wal.commit(1)
    assert len(segments(tmp_path)) <= 2
    assert sum(os.path.getsize(tmp_path / name) for name in segments(tmp_path)) <= 200
    assert opened(tmp_path, segment_bytes=100)[1] == [b"%03d" % i + b"x" * 17 for i in range(197, 200)]


def test_recovery_spans_segments(tmp_path: Path) -> None:
    wal, _ = opened(tmp_path, segment_bytes=50)
    for i in range(10):
        wal.append(b"event-%02d" % i + b"." * 10)
    wal.commit(3)
    assert len(segments(tmp_path)) > 2
    assert opened(tmp_path)[1] == [b"event-%02d" % i + b"." * 10 for i in range(3, 10)]
    assert len(segments(tmp_path)) == 1  # the new process starts one empty segment


def test_a_frame_torn_by_the_kill_ends_the_recovery(tmp_path: Path) -> None:
    wal, _ = opened(tmp_path)
    wal.append(b"whole")
    wal.append(b"torn-frame")
    (name,) = segments(tmp_path)
    with open(tmp_path / name, "r+b") as log:
        log.truncate(os.path.getsize(tmp_path / name) - 3)
    assert opened(tmp_path)[1] == [b"whole"]


def test_a_failing_disk_turns_the_log_off_without_raising(tmp_path: Path) -> None:
    wal, _ = opened(tmp_path)
    wal.append(b"kept")
    os.close(wal._fd)  # a descriptor that no longer writes, as a full or broken disk would
    wal._fd = os.open(os.devnull, os.O_RDONLY)
    wal.append(b"lost")
    assert wal.broken
    wal.commit(2)  # no error either
    assert opened(tmp_path)[1] == [b"kept"]
    wal.close()
