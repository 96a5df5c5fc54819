"""W3C trace context (`traceparent`, `tracestate`), trace and span ids, and the OpenTelemetry samplers.

Ids are random bits from `random` (it reseeds itself in forked workers), as in the OpenTelemetry
SDK's default id generator, kept as big-endian bytes: the form OTLP encodes and `bytes.hex()`
formats, so a call's ids are made in one draw and never converted to integers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$")
_TRACESTATE_KEY = r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
_TRACESTATE_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_TRACESTATE_MEMBER = re.compile(rf"^\s*({_TRACESTATE_KEY})=({_TRACESTATE_VALUE})\s*$")
_MAX_TRACESTATE_MEMBERS = 32
_LOW_64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Parent:
    """A valid remote parent taken from the client's `traceparent` / `tracestate`."""

    trace_id: bytes
    span_id: bytes
    sampled: bool
    trace_state: str


_ZERO_ID = bytes(8)


def new_ids(size: int) -> bytes:
    """`size` random bytes in which no aligned 8-byte id is all zeros (invalid in W3C and OTLP)."""
    ids = random.randbytes(size)  # noqa: S311 - ids need to be unique, not secret (as in the SDK)
    while ids.find(_ZERO_ID) >= 0:  # about once in 2**60 calls; an unaligned run of zeros just draws again
        # (not `_ZERO_ID in ids`: bytes.__contains__ first tries the needle as an int and raises inside)
        ids = random.randbytes(size)  # noqa: S311 - ids need to be unique, not secret (as in the SDK)
    return ids


def new_span_id() -> bytes:
    return new_ids(8)


def traceparent(trace_hex: str, span_id: bytes, sampled: bool) -> str:
    return f"00-{trace_hex}-{span_id.hex()}-{'01' if sampled else '00'}"


def parse_parent(traceparent: str, tracestate: str = "") -> Parent | None:
    """The W3C parent, or None for a missing or invalid `traceparent` (a new trace starts then)."""
    match = _TRACEPARENT.match(traceparent)
    if match is None:
        return None
    version, trace, span, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = bytes.fromhex(trace), bytes.fromhex(span)
    if not any(trace_id) or not any(span_id):
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & 1), parse_tracestate(tracestate))


def parse_tracestate(header: str) -> str:
    """The normalised `tracestate`, or "" when any member is invalid (the whole header is dropped then)."""
    members: list[str] = []
    keys: set[str] = set()
    for part in header.split(","):
        if not part.strip():
            continue
        match = _TRACESTATE_MEMBER.match(part)
        if match is None or match.group(1) in keys:
            return ""
        keys.add(match.group(1))
        members.append(f"{match.group(1)}={match.group(2)}")
    return ",".join(members) if len(members) <= _MAX_TRACESTATE_MEMBERS else ""


Sampler = Callable[[Parent | None, bytes], bool]
"""`sampler(parent, trace_id)`: whether the trace is recorded and exported."""


def make_sampler(name: str, ratio: float) -> Sampler:
    """The OTEL_TRACES_SAMPLER samplers; `traceidratio` decides on the low 64 bits as the SDK does."""
    bound = round(ratio * (_LOW_64 + 1))
    roots: dict[str, Callable[[bytes], bool]] = {
        "always_on": lambda trace_id: True,
        "always_off": lambda trace_id: False,
        "traceidratio": lambda trace_id: int.from_bytes(trace_id[8:], "big") < bound,
    }
    root = roots[name.removeprefix("parentbased_")]
    if name.startswith("parentbased_"):
        return lambda parent, trace_id: parent.sampled if parent is not None else root(trace_id)
    return lambda parent, trace_id: root(trace_id)
