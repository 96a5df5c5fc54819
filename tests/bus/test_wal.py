"""The write-ahead log of the Redis Streams bus: what a killed process appended comes back once."""

from __future__ import annotations

import os
from pathlib import Path

from llm_proxy.bus.wal import WriteAheadLog


def opened(directory: Path, rotate_bytes: int = 1 << 20) -> tuple[WriteAheadLog, list[bytes]]:
    wal = WriteAheadLog(rotate_bytes=rotate_bytes)
    return wal, wal.open(directory)


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


def test_a_fully_committed_log_is_truncated_once_past_its_rotation_size(tmp_path: Path) -> None:
    wal, _ = opened(tmp_path, rotate_bytes=100)
    for _ in range(10):
        wal.append(b"x" * 20)
    assert os.path.getsize(tmp_path / "wal") == 10 * 28
    wal.commit(9)
    assert os.path.getsize(tmp_path / "wal") == 10 * 28
    wal.commit(1)
    assert os.path.getsize(tmp_path / "wal") == 0
    wal.append(b"after")
    assert opened(tmp_path)[1] == [b"after"]


def test_a_frame_torn_by_the_kill_ends_the_recovery(tmp_path: Path) -> None:
    wal, _ = opened(tmp_path)
    wal.append(b"whole")
    wal.append(b"torn-frame")
    with open(tmp_path / "wal", "r+b") as log:
        log.truncate(os.path.getsize(tmp_path / "wal") - 3)
    assert opened(tmp_path)[1] == [b"whole"]


def test_a_failing_disk_disables_the_log_but_not_the_bus(tmp_path: Path) -> None:
    wal, _ = opened(tmp_path)
    wal.append(b"kept")
    wal.close()  # the descriptor is gone: the next write fails like a full or broken disk
    wal._fd = os.open(os.devnull, os.O_RDONLY)
    wal.append(b"lost")
    assert wal.broken
    wal.commit(2)  # no error either
    assert opened(tmp_path)[1] == [b"kept"]
    os.close(wal._fd)
