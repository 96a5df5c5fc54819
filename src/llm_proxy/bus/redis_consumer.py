"""RedisSubscription: one consumer of a Redis Streams consumer group.

`receive` tries, in this order: (1) every so often, `XAUTOCLAIM` of messages that have waited
unacknowledged for `REDIS_STREAM_CLAIM_TIME` in any consumer of the group (a dispatcher that died
holding them, or this one forgetting them); (2) once after start, this consumer's own pending
backlog (`XREADGROUP ... 0`), left by a previous run under the same name; (3) new messages
(`XREADGROUP ... >` with BLOCK). Nothing is acknowledged here: the caller acks after its sink
confirmed. A message handed out more than `REDIS_STREAM_MAX_DELIVERIES` times, or one that does
not decode, is moved to the dead-letter stream (`XADD` + `XACK` in one MULTI) with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from llm_proxy.bus import BusError, Delivery, GroupStats
from llm_proxy.bus.lograte import RateLimitedLog
from llm_proxy.events import EventDecodeError, decode_event, encode_event
from llm_proxy.settings import RedisSettings

Entries = list[tuple[bytes, dict[bytes, bytes] | None]]


class RedisSubscription:
    def __init__(self, client: Redis, settings: RedisSettings, group: str, consumer: str, *,
                 logger: logging.Logger,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.client = client
        self.settings = settings
        self.stream = settings.stream_key
        self.group = group
        self.consumer = consumer
        self.logger = logger
        self.on_failure = on_failure
        self.delivered = self.acked = self.dead_lettered = 0
        self._group_ready = False
        self._own_cursor: str | None = "0"
        self._claim_cursor = "0-0"
        self._last_claim = float("-inf")
        self._backoff = 0.1
        self._closed = False
        self._fail_log = RateLimitedLog(logger)

    async def receive(self, max_count: int | None = None,
                      block: float | None = None) -> list[Delivery]:
        count = max_count or self.settings.batch_size
        wait = self.settings.block_time if block is None else block
        if self._closed:
            return []
        try:
            batch = await self._receive(count, wait)
        except (RedisError, OSError) as exc:
            if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                self._group_ready = False
            return await self._failed(exc, wait)
        self._backoff = 0.1
        self.delivered += len(batch)
        return batch

    async def _receive(self, count: int, wait: float) -> list[Delivery]:
        await self._ensure_group()
        if self._claim_due():
            batch = await self._claim(count)
            if batch:
                return batch
        if self._own_cursor is not None:
            batch = await self._read_own(count)
            if batch:
                return batch
        block_ms = int(min(wait, self.settings.block_time) * 1000)
        response: list[Any] = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count,
            block=block_ms if block_ms > 0 else None)  # type: ignore[assignment]
        entries: Entries = response[0][1] if response else []
        return await self._to_deliveries(entries, None)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _claim_due(self) -> bool:
        interval = min(max(self.settings.claim_time / 2, 0.05), 15.0)
        return asyncio.get_running_loop().time() - self._last_claim >= interval

    async def _claim(self, count: int) -> list[Delivery]:
        self._last_claim = asyncio.get_running_loop().time()
        response: list[Any] = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, int(self.settings.claim_time * 1000),
            start_id=self._claim_cursor, count=count)
        self._claim_cursor = _text(response[0])
        if self._claim_cursor != "0-0":
            self._last_claim = float("-inf")  # more idle messages may follow: claim again next call
        entries: Entries = response[1]
        if not entries:
            return []
        counts = await self._delivery_counts([_text(mid) for mid, _ in entries])
        return await self._to_deliveries(entries, counts)

    async def _read_own(self, count: int) -> list[Delivery]:
        assert self._own_cursor is not None
        response: list[Any] = await self.client.xreadgroup(  # type: ignore[assignment]
            self.group, self.consumer, {self.stream: self._own_cursor}, count=count)
        entries: Entries = response[0][1] if response else []
        if not entries:
            self._own_cursor = None
            return []
        self._own_cursor = _text(entries[-1][0])
        counts = await self._delivery_counts([_text(mid) for mid, _ in entries])
        return await self._to_deliveries(entries, counts)

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        async with self.client.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.xpending_range(self.stream, self.group, mid, mid, 1)
            replies: list[list[dict[str, Any]]] = await pipe.execute()
        return {_text(row["message_id"]): int(row["times_delivered"])
                for reply in replies for row in reply}

    async def _to_deliveries(self, entries: Entries, counts: dict[str, int] | None,
                             ) -> list[Delivery]:
        batch = []
        for raw_id, fields in entries:
            mid = _text(raw_id)
            if not fields:  # trimmed from the stream while pending: nothing left to deliver
                await self.client.xack(self.stream, self.group, mid)
                continue
            payload = fields.get(b"data")
            deliveries = counts.get(mid, 1) if counts is not None else 1
            if payload is None:
                await self._bury(mid, b"", "entry has no data field", deliveries)
            elif deliveries > self.settings.max_deliveries:
                await self._bury(mid, payload, f"delivered {deliveries} times without ack "
                                 f"(max {self.settings.max_deliveries})", deliveries)
            else:
                try:
                    batch.append(Delivery(mid, decode_event(payload), deliveries))
                except EventDecodeError as exc:
                    await self._bury(mid, payload, f"undecodable event: {exc}", deliveries)
        return batch

    async def _failed(self, exc: BaseException, wait: float) -> list[Delivery]:
        self._fail_log.warning("event bus: reading stream %r failed: %s", self.stream, exc)
        if self.on_failure is not None and not isinstance(exc, ResponseError):
            self.on_failure(exc)
        await asyncio.sleep(min(self._backoff, wait))
        self._backoff = min(self._backoff * 2, 5.0)
        return []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        try:
            await self.client.xack(self.stream, self.group, *(d.id for d in deliveries))
        except (RedisError, OSError) as exc:
            raise BusError(f"ack of {len(deliveries)} messages failed: {exc}") from exc
        self.acked += len(deliveries)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        try:
            await self._bury(delivery.id, encode_event(delivery.event), reason,
                             delivery.deliveries)
        except (RedisError, OSError) as exc:
            raise BusError(f"dead-lettering {delivery.id} failed: {exc}") from exc

    async def _bury(self, mid: str, payload: bytes, reason: str, deliveries: int) -> None:
        fields: dict[FieldT, EncodableT] = {
            "data": payload, "reason": reason, "stream": self.stream, "group": self.group,
            "consumer": self.consumer, "message_id": mid, "deliveries": deliveries,
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.settings.dead_letter_key, fields)
            pipe.xack(self.stream, self.group, mid)
            await pipe.execute()
        self.dead_lettered += 1
        self.logger.warning("event bus: message %s of %r moved to %r: %s", mid, self.stream,
                            self.settings.dead_letter_key, reason)

    def stats(self) -> GroupStats:
        in_hand = self.delivered - self.acked - self.dead_lettered
        return GroupStats(self.group, (self.consumer,), self.delivered, self.acked, 0,
                          self.dead_lettered, 0, max(in_hand, 0))

    async def aclose(self) -> None:
        """Close; a consumer with nothing pending is removed from the group's consumer list."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._group_ready and not await self.client.xpending_range(
                    self.stream, self.group, "-", "+", 1, consumername=self.consumer):
                await self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except (RedisError, OSError) as exc:
            self.logger.debug("event bus: consumer cleanup skipped: %s", exc)
        finally:
            await self.client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
