"""The dead-letter stream (`REDIS_DEAD_LETTER_KEY`): read, filter by consumer group, delete.

Entries are written by the bus (`Subscription.dead_letter`, or a message delivered too often or
undecodable) with the fields `data` (the event's wire JSON), `reason`, `stream`, `group`,
`consumer`, `message_id` and `deliveries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from llm_proxy.events import Event, EventDecodeError, decode_event
from llm_proxy.settings import RedisSettings

PAGE = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    reason: str
    group: str
    consumer: str
    message_id: str
    deliveries: int
    data: bytes

    def event(self) -> Event | None:
        try:
            return decode_event(self.data)
        except EventDecodeError:
            return None


class DeadLetterStore:
    def __init__(self, client: Redis, key: str) -> None:
        self.client = client
        self.key = key

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> DeadLetterStore:
        client = Redis.from_url(settings.connection_url(), socket_connect_timeout=2.0, socket_timeout=10.0)
        return cls(client, settings.dead_letter_key)

    async def entries(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Oldest first; only the entries of `group` when given."""
        found: list[DeadLetter] = []
        start = "-"
        while len(found) < limit:
            page = cast("list[Any]", await self.client.xrange(self.key, min=start, max="+", count=PAGE) or [])
            for raw_id, fields in page:
                letter = _letter(raw_id, fields)
                if group is None or letter.group == group:
                    found.append(letter)
            if len(page) < PAGE:
                break
            start = "(" + _text(page[-1][0])
        return found[:limit]

    async def count(self) -> int:
        return int(await self.client.xlen(self.key))

    async def delete(self, ids: list[str]) -> int:
        return int(await self.client.xdel(self.key, *ids)) if ids else 0

    async def aclose(self) -> None:
        await self.client.aclose()


def _letter(raw_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    def field(name: str) -> str:
        return _text(fields.get(name.encode(), b""))

    deliveries = field("deliveries")
    return DeadLetter(_text(raw_id), field("reason"), field("group"), field("consumer"), field("message_id"),
                      int(deliveries) if deliveries.isdigit() else 0, fields.get(b"data", b""))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
