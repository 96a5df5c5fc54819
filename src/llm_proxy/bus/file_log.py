"""FileEventLog (`--file-event-log PATH`, `FILE_EVENT_LOG`): every event as one JSON line.

It reads a `bus.tap(...)`: an in-process subscription to what this process publishes, outside
any Redis consumer group, so it never takes events away from the dispatchers. Lines are the
`encode_event` JSON. Writes go out as they arrive and are acknowledged once written; fsync
happens at most every `fsync_interval` seconds. (Acknowledging only after the fsync bought
nothing — the tap is in-process, so nothing would redeliver after a crash — and held up to
`fsync_interval` worth of events against the tap's capacity: above ~5,000 events/s the tap
dropped events.)
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Self

from llm_proxy.bus import Delivery, EventBus, Subscription
from llm_proxy.bus.lograte import RateLimitedLog
from llm_proxy.events import encode_event


class FileEventLog:
    def __init__(self, path: str | os.PathLike[str], subscription: Subscription, *,
                 batch_size: int = 256, fsync_interval: float = 0.2,
                 logger: logging.Logger | None = None) -> None:
        self.path = Path(path)
        self.subscription = subscription
        self.batch_size = batch_size
        self.fsync_interval = fsync_interval
        self.logger = logger or logging.getLogger(__name__)
        self.written = 0
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._unsynced = False
        self._last_sync = 0.0
        self._error_log = RateLimitedLog(self.logger)

    @classmethod
    def attach(cls, bus: EventBus, path: str | os.PathLike[str],
               logger: logging.Logger | None = None) -> Self:
        return cls(path, bus.tap("file-event-log"), logger=logger)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._task = asyncio.create_task(self._run(), name="file-event-log")

    async def aclose(self) -> None:
        """Write and fsync what the subscription still holds, then close the file."""
        self._stopping = True
        if self._task is not None:
            await self._task
        await self.subscription.aclose()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = 0.0 if self._stopping else self.fsync_interval
            began = loop.time()
            batch = await self.subscription.receive(self.batch_size, block=timeout)
            if not batch and loop.time() - began < timeout / 2:
                await asyncio.sleep(timeout)  # the subscription is closed: do not spin
            if batch and not await self._write(batch):
                await asyncio.sleep(0.0 if self._stopping else 1.0)
                if self._stopping:
                    return
                continue
            if self._unsynced and (not batch or loop.time() - self._last_sync
                                   >= self.fsync_interval):
                await self._sync()
            if not batch and self._stopping:
                return

    async def _write(self, batch: list[Delivery]) -> bool:
        data = b"".join(encode_event(d.event) + b"\n" for d in batch)
        assert self._fd is not None
        try:
            await asyncio.to_thread(_write_all, self._fd, data)
        except OSError as exc:
            self._error_log.warning("file event log: writing %s failed: %s", self.path, exc)
            return False
        self._unsynced = True
        self.written += len(batch)
        await self.subscription.ack(batch)
        return True

    async def _sync(self) -> None:
        assert self._fd is not None
        try:
            await asyncio.to_thread(os.fsync, self._fd)
        except OSError as exc:
            self._error_log.warning("file event log: fsync of %s failed: %s", self.path, exc)
            return
        self._last_sync = asyncio.get_running_loop().time()
        self._unsynced = False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
