"""W3C trace context (`traceparent`, `tracestate`), trace and span ids, and the OpenTelemetry samplers.

Ids are random integers from `random` (it reseeds itself in forked workers), as in the
OpenTelemetry SDK's default id generator.
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

    trace_id: int
    span_id: int
    sampled: bool
    trace_state: str


def new_trace_id() -> int:
    return random.getrandbits(128) or 1


def new_span_id() -> int:
    return random.getrandbits(64) or 1


def traceparent(trace_hex: str, span_id: int, sampled: bool) -> str:
    return f"00-{trace_hex}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_parent(traceparent: str, tracestate: str = "") -> Parent | None:
    """The W3C parent, or None for a missing or invalid `traceparent` (a new trace starts then)."""
    match = _TRACEPARENT.match(traceparent)
    if match is None:
        return None
    version, trace, span, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
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


Sampler = Callable[[Parent | None, int], bool]
"""`sampler(parent, trace_id)`: whether the trace is recorded and exported."""


def make_sampler(name: str, ratio: float) -> Sampler:
    """The OTEL_TRACES_SAMPLER samplers; `traceidratio` decides on the low 64 bits as the SDK does."""
    bound = round(ratio * (_LOW_64 + 1))
    roots: dict[str, Callable[[int], bool]] = {
        "always_on": lambda trace_id: True,
        "always_off": lambda trace_id: False,
        "traceidratio": lambda trace_id: (trace_id & _LOW_64) < bound,
    }
    root = roots[name.removeprefix("parentbased_")]
    if name.startswith("parentbased_"):
        return lambda parent, trace_id: parent.sampled if parent is not None else root(trace_id)
    return lambda parent, trace_id: root(trace_id)
