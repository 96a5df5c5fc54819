"""InMemorySink: keeps every batch it is sent; the sink of tests and benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from llm_proxy.dispatcher.record import SinkRecord


class InMemorySink:
    def __init__(self) -> None:
        self.batches: list[list[SinkRecord]] = []
        self.closed = False
        self.changed = asyncio.Event()

    @property
    def records(self) -> list[SinkRecord]:
        return [record for batch in self.batches for record in batch]

    @property
    def ids(self) -> list[str]:
        return [record.id for record in self.records]

    async def send(self, records: Sequence[SinkRecord]) -> None:
        self.batches.append(list(records))
        self.changed.set()

    async def wait_for(self, count: int, limit: float = 10.0) -> list[SinkRecord]:
        """The records once at least `count` distinct events arrived (TimeoutError after `limit` s)."""
        async with asyncio.timeout(limit):
            while len(set(self.ids)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.records

    async def aclose(self) -> None:
        self.closed = True
