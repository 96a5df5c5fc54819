"""Metric values that add up across the worker processes of one server.

Each worker owns one `ValueStore`: a flat array of float64 slots. With one worker it lives in
anonymous memory. With several (`WORKERS>1`) it is a memory-mapped file `<pid>.values` in a
directory shared by the workers of one server, next to an append-only `<pid>.index` that names
each series' slots; any worker answering a scrape reads every file and adds them up
(`read_directory`). Writes are plain stores into the worker's own map, so recording a value
takes no lock and no system call; readers tolerate a series whose index line is not written yet
(they skip it until the next scrape).

The owner holds an exclusive `flock` on its values file while it lives. A file nobody holds
belongs to a worker that exited: its counters keep counting in the totals (a restarted worker
must not make a counter go down), its gauges are left out. Files of another server (another
master process) that share the directory are ignored, and removed once their owner is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger("llm_proxy.metrics")

SLOT = 8
INITIAL_SLOTS = 4096
SeriesKey = tuple[str, tuple[str, ...]]


class ValueStore:
    """One worker's slots; `values[slot] += x` is the whole cost of recording."""

    def __init__(self, directory: Path | None = None, master: str = "", name: str | None = None) -> None:
        self.directory = directory
        self.master = master
        self.name = name or str(os.getpid())
        self._slots: dict[SeriesKey, tuple[int, int]] = {}
        self._used = 0
        self._capacity = INITIAL_SLOTS
        self._file: int | None = None
        self._index: int | None = None
        if directory is not None:
            self._open_files(directory)
        self._map = self._new_map()
        self.values = memoryview(self._map).cast("d")

    def slot(self, metric: str, labels: tuple[str, ...], width: int = 1) -> int:
        """The first of `width` consecutive slots of a series, allocated on first use."""
        key = (metric, labels)
        found = self._slots.get(key)
        if found is not None:
            return found[0]
        first = self._used
        if first + width > self._capacity:
            self._grow(first + width)
        self._used += width
        self._slots[key] = (first, width)
        if self._index is not None:
            os.write(self._index, orjson.dumps([first, width, metric, labels]) + b"\n")
        return first

    def series(self) -> dict[SeriesKey, tuple[int, int]]:
        """Each series' first slot and width."""
        return dict(self._slots)

    def close(self) -> None:
        self.values.release()
        self._map.close()
        for fd in (self._file, self._index):
            if fd is not None:
                os.close(fd)
        self._file = self._index = None

    def _open_files(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file = os.open(directory / f"{self.name}.values", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fcntl.flock(self._file, fcntl.LOCK_EX)
        os.ftruncate(self._file, self._capacity * SLOT)
        self._index = os.open(directory / f"{self.name}.index",
                              os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.write(self._index, orjson.dumps({"pid": os.getpid(), "master": self.master}) + b"\n")

    def _new_map(self) -> mmap.mmap:
        if self._file is None:
            return mmap.mmap(-1, self._capacity * SLOT)
        return mmap.mmap(self._file, self._capacity * SLOT)

    def _grow(self, needed: int) -> None:
        while self._capacity < needed:
            self._capacity *= 2
        old_values, old_map = self.values, self._map
        if self._file is not None:
            os.ftruncate(self._file, self._capacity * SLOT)
        self._map = self._new_map()
        if self._file is None:
            self._map[: len(old_map)] = old_map[:]
        self.values = memoryview(self._map).cast("d")
        old_values.release()
        old_map.close()


@dataclass(frozen=True, slots=True)
class WorkerValues:
    pid: int
    alive: bool
    series: dict[SeriesKey, list[float]]


def read_store(store: ValueStore) -> list[WorkerValues]:
    """Every worker's values: from the shared directory, or the store itself when it has none."""
    if store.directory is None:
        values = store.values
        series = {key: list(values[first:first + width]) for key, (first, width) in store.series().items()}
        return [WorkerValues(os.getpid(), True, series)]
    return list(read_directory(store.directory, store.master))


def read_directory(directory: Path, master: str) -> Iterator[WorkerValues]:
    for index_path in sorted(directory.glob("*.index")):
        found = _read_worker(index_path, master)
        if found is not None:
            yield found


def _read_worker(index_path: Path, master: str) -> WorkerValues | None:
    values_path = index_path.with_suffix(".values")
    try:
        lines = index_path.read_bytes().splitlines()
        header = orjson.loads(lines[0]) if lines else None
        if not isinstance(header, dict) or header.get("master") != master:
            return None
        with open(values_path, "rb") as handle:
            alive = _held(handle.fileno())
            data = handle.read()
    except (OSError, orjson.JSONDecodeError):
        return None
    doubles = memoryview(data[: len(data) // SLOT * SLOT]).cast("d")
    series: dict[SeriesKey, list[float]] = {}
    for line in lines[1:]:
        try:
            first, width, metric, labels = orjson.loads(line)
        except (orjson.JSONDecodeError, ValueError):
            continue  # a line still being written
        if first + width <= len(doubles):
            series[(metric, tuple(labels))] = list(doubles[first:first + width])
    return WorkerValues(int(header.get("pid", 0)), alive, series)


def _held(fd: int) -> bool:
    """Whether another open file (a live worker) holds the file's exclusive lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def master_identity() -> str:
    """Identifies the process that started this worker: its pid and, on Linux, its start time."""
    parent = os.getppid()
    try:
        stat = Path(f"/proc/{parent}/stat").read_text()
        started = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = ""
    return f"{parent}-{started}"


def default_directory() -> Path:
    return Path(tempfile.gettempdir()) / f"llm-proxy-metrics-{os.getuid()}"


def remove_stale(directory: Path, master: str) -> None:
    """Delete files of workers of another server that have exited (never a live one's)."""
    for index_path in directory.glob("*.index"):
        values_path = index_path.with_suffix(".values")
        with contextlib.suppress(OSError, orjson.JSONDecodeError, IndexError, AttributeError):
            header = orjson.loads(index_path.read_bytes().splitlines()[0])
            if header.get("master") == master:
                continue
            with open(values_path, "rb") as handle:
                if _held(handle.fileno()):
                    continue
            values_path.unlink(missing_ok=True)
            index_path.unlink(missing_ok=True)
