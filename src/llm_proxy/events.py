"""The observability event: the one record of a proxied call, and its wire encoding.

This module is the contract between the proxy (which publishes) and the dispatchers (which
consume); it imports nothing internal except the UUIDv7 factory. `docs/events.md` describes
every field.

Wire format: msgspec JSON, keys in snake_case, every field always present. Timestamps are
RFC 3339 strings in UTC with microseconds (`2025-01-02T03:04:05.123456Z`), chosen over epoch
floats because every sink (Lunary, Helicone, CloudWatch, files) reads them without conversion;
durations are float milliseconds. Bodies are standard padded base64. Decoders ignore unknown
fields, so adding a field is compatible; removing or retyping one bumps `SCHEMA_VERSION`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec

from llm_proxy.clock import uuid7_str

SCHEMA_VERSION = 1

SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "api-key", "x-api-key",
})
"""Header names that are always dropped from events."""

SENSITIVE_NAME_PARTS = frozenset({
    "auth", "apikey", "credential", "credentials", "key", "passwd", "password", "secret",
    "session", "signature", "token",
})
"""A header whose name has one of these as a `-`/`_`-separated part is dropped as well.

Whole parts, not substrings: `x-ratelimit-remaining-tokens` (OpenAI's rate-limit header) is
kept, `x-goog-api-key`, `x-auth-token` and `x-amz-security-token` are dropped.
"""

_CREDENTIAL_VALUE_PREFIXES = ("bearer ", "basic ")
_CREDENTIAL_FIRST_LETTERS = frozenset("bB")


class EventDecodeError(ValueError):
    """The bytes are not a valid event of any supported schema version."""


def new_event_id() -> str:
    return uuid7_str()


class Event(msgspec.Struct, kw_only=True):
    """One proxied call. Built once by the instrumentation middleware, then only read.

    The dispatcher may fill usage and cost later with `msgspec.structs.replace`.
    """

    schema_version: int = SCHEMA_VERSION
    event_id: str = msgspec.field(default_factory=new_event_id)
    request_id: str = ""

    started_at: datetime
    first_byte_at: datetime | None = None
    ended_at: datetime
    duration_ms: float = 0.0
    upstream_ms: float | None = None
    overhead_ms: float | None = None

    method: str = ""
    path: str = ""
    query: str = ""
    status: int = 0
    provider: str = ""
    model: str | None = None
    stream: bool = False

    project_id: str | None = None
    token_id: str | None = None
    token_metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    user_id: str | None = None
    client_ip: str | None = None
    cache_status: str | None = None

    request_headers: dict[str, str] = msgspec.field(default_factory=dict)
    response_headers: dict[str, str] = msgspec.field(default_factory=dict)
    request_body: bytes = b""
    request_body_truncated: bool = False
    response_body: bytes = b""
    response_body_truncated: bool = False
    content_encoding: str | None = None

    error: str | None = None
    error_code: str | None = None
    client_disconnected: bool = False
    upstream_error: bool = False

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_estimated: bool = False
    cost_usd: float | None = None
    cost_known: bool = False

    trace_id: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(str(exc)) from None


def cap_body(body: bytes, limit: int) -> tuple[bytes, bool]:
    """The first `limit` bytes of `body`, and whether anything was cut."""
    if len(body) <= limit:
        return body, False
    return body[:limit], True


@functools.lru_cache(maxsize=1024)
def is_sensitive_header(name: str) -> bool:
    """Whether a header (lower-case name) may carry a credential; see `SENSITIVE_NAME_PARTS`."""
    if name in SENSITIVE_HEADERS:
        return True
    parts = name.replace("_", "-").split("-")
    return any(part in SENSITIVE_NAME_PARTS for part in parts)


@functools.lru_cache(maxsize=4096)
def _kept_name(raw_name: bytes | str) -> str | None:
    """The lower-case name an event keeps for `raw_name`, or None when it must be dropped."""
    name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
    return None if is_sensitive_header(name) else name


def sanitize_headers(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    """Headers as an event keeps them: lower-case names, repeated values joined with `, `.

    Dropped: the names in `SENSITIVE_HEADERS`, names with a part in `SENSITIVE_NAME_PARTS`,
    and any header whose value starts with `Bearer ` or `Basic ` whatever its name.
    Accepts ASGI raw headers (bytes pairs) or str pairs.
    """
    result: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = _kept_name(raw_name)
        if name is None:
            continue
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        if value[:1] in _CREDENTIAL_FIRST_LETTERS and value[:7].lower().startswith(_CREDENTIAL_VALUE_PREFIXES):
            continue
        previous = result.get(name)
        result[name] = value if previous is None else f"{previous}, {value}"
    return result
