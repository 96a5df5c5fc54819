"""Readings of the worker process and the Python runtime, in place of the predecessor's Go ones."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import threading
from dataclasses import dataclass
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class RuntimeReading:
    resident_memory_bytes: float
    virtual_memory_bytes: float
    cpu_seconds: float
    open_fds: float
    threads: float
    asyncio_tasks: float
    gc_collections: tuple[float, ...]
    gc_collected: tuple[float, ...]


def read_runtime() -> RuntimeReading:
    virtual, resident = _memory()
    times = os.times()
    stats = gc.get_stats()
    return RuntimeReading(
        resident_memory_bytes=resident,
        virtual_memory_bytes=virtual,
        cpu_seconds=times.user + times.system,
        open_fds=_open_fds(),
        threads=float(threading.active_count()),
        asyncio_tasks=float(_task_count()),
        gc_collections=tuple(float(s["collections"]) for s in stats),
        gc_collected=tuple(float(s["collected"]) for s in stats),
    )


def _memory() -> tuple[float, float]:
    try:
        size, resident = Path("/proc/self/statm").read_text().split()[:2]
        return float(int(size) * _PAGE), float(int(resident) * _PAGE)
    except (OSError, ValueError):
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return 0.0, float(peak_kib * 1024)


def _open_fds() -> float:
    try:
        return float(len(os.listdir("/proc/self/fd")))
    except OSError:
        return 0.0


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0
