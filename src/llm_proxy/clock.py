"""Clock and id factories, injected so that tests and events are deterministic."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit ms timestamp, 74 random bits."""
    return uuid.UUID(int=_uuid7_int())


def uuid7_str() -> str:
    """`str(uuid7())`, made without the UUID object (one per proxied call: the event id)."""
    return _dashed(f"{_uuid7_int():032x}")


def uuid4_str() -> str:
    """A random (version 4) UUID string, from `random` rather than os.urandom: request ids need to
    be unique, not unguessable, and this costs a fifth of `str(uuid.uuid4())`."""
    value = (random.getrandbits(128) & _V4_CLEAR) | _V4_SET
    return _dashed(f"{value:032x}")


_V4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_V4_SET = (0x4 << 76) | (0b10 << 62)


def _uuid7_int() -> int:
    ms = time.time_ns() // 1_000_000
    rand = random.getrandbits(74)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return value


def _dashed(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


def new_id() -> str:
    """A random UUIDv4 string: the record id of projects, tokens and audit entries."""
    return str(uuid.uuid4())
