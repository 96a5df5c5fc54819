"""UsageCounter: token usage counters batched in memory and flushed off the request path.

Recording is a dict update: it never awaits, blocks or raises, so the proxy can call it on every
request. A background task hands the accumulated deltas to `TokenStore.apply_usage` every
`flush_interval` seconds, or sooner once `max_pending` uses are waiting. A failed flush puts its
deltas back (merged with whatever arrived meanwhile) for the next attempt, so memory stays bounded
by the number of distinct tokens, not by the number of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

from llm_proxy.records import UsageDelta
from llm_proxy.storage import TokenStore


@dataclass(slots=True)
class _Pending:
    requests: int = 0
    cache_hits: int = 0
    last_used_at: datetime | None = None

    def touch(self, at: datetime | None) -> None:
        if at is not None and (self.last_used_at is None or at > self.last_used_at):
            self.last_used_at = at

    def delta(self) -> UsageDelta:
        return UsageDelta(self.requests, self.cache_hits, self.last_used_at)


class UsageCounter:
    def __init__(
        self, store: TokenStore, *, max_pending: int, flush_interval: float, logger: logging.Logger
    ) -> None:
        self._store = store
        self._max_pending = max(1, max_pending)
        self._interval = flush_interval
        self._log = logger
        self._pending: dict[str, _Pending] = {}
        self._uses = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def record_request(self, token_id: str, at: datetime) -> None:
        entry = self._entry(token_id)
        entry.requests += 1
        entry.touch(at)
        self._counted()

    def record_cache_hit(self, token_id: str, at: datetime) -> None:
        entry = self._entry(token_id)
        entry.cache_hits += 1
        entry.touch(at)
        self._counted()

    def pending(self) -> dict[str, UsageDelta]:
        """A snapshot of the deltas not yet written."""
        return {token_id: entry.delta() for token_id, entry in self._pending.items()}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-flusher")

    async def flush(self) -> bool:
        """Write what is pending now; False (deltas kept) when the store failed."""
        batch, self._pending, self._uses = self._pending, {}, 0
        if not batch:
            return True
        try:
            await self._store.apply_usage({tid: entry.delta() for tid, entry in batch.items()})
        except Exception:
            self._restore(batch)
            self._log.warning(
                "usage flush failed; keeping counters of %d tokens for the next attempt",
                len(batch), exc_info=True,
            )
            return False
        return True

    async def aclose(self) -> None:
        """Stop the background task and write what is left."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not await self.flush():
            self._log.error("usage counters of %d tokens were not written", len(self._pending))

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            if self._closing:
                return
            if not await self.flush():
                # The store is failing: wait a full interval instead of retrying per request.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed(), timeout=self._interval)

    async def _closed(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()

    def _entry(self, token_id: str) -> _Pending:
        entry = self._pending.get(token_id)
        if entry is None:
            entry = self._pending[token_id] = _Pending()
        return entry

    def _counted(self) -> None:
        self._uses += 1
        if self._uses >= self._max_pending:
            self._wake.set()

    def _restore(self, batch: dict[str, _Pending]) -> None:
        for token_id, old in batch.items():
            entry = self._entry(token_id)
            entry.requests += old.requests
            entry.cache_hits += old.cache_hits
            entry.touch(old.last_used_at)
        self._uses += sum(old.requests + old.cache_hits for old in batch.values())
