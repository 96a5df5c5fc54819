"""OTLP/HTTP protobuf wire format for spans (`ExportTraceServiceRequest`), written by hand.

Building opentelemetry-proto's generated message classes costs about a microsecond per
attribute; this writes the bytes directly. Most attributes repeat from call to call (method,
path, model, provider, status...), so encoded attribute fields are cached (`AttributeFields`)
and a span is mostly a join of cached byte strings. Field numbers are those of
opentelemetry-proto's `trace/v1/trace.proto` and `common/v1/common.proto`; the tests decode the
output with opentelemetry-proto itself.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

_MAX_CACHED = 512
_INT64 = (1 << 64) - 1
_DOUBLE = struct.Struct("<d").pack
_TIMES = struct.Struct("<BQBQ").pack
"""start_time_unix_nano (field 7) and end_time_unix_nano (field 8), both fixed64."""
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x101)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x301)
"""Span.flags (field 16, fixed32): sampled, plus "parent is remote" known (0x100) and set (0x200)."""
_STATUS_ERROR = b"\x7a\x02\x18\x02"
"""Span.status (field 15) with code STATUS_CODE_ERROR."""


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [_varint_slow(n) for n in range(16384)]


def varint(value: int) -> bytes:
    return _SMALL_VARINTS[value] if value < 16384 else _varint_slow(value)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """An `AnyValue`; booleans before ints, since a bool is an int in Python."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value & _INT64)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, list | tuple):
        return _field(b"\x2a", b"".join(_field(b"\x0a", any_value(item)) for item in value))
    return _field(b"\x0a", str(value).encode())


def key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", any_value(value))


_KEYS: dict[str, bytes] = {}
_DOUBLE_HEADS: dict[str, bytes] = {}


def attribute(key: str, value: Any) -> bytes:
    """A `Span.attributes` entry (field 9), not cached: for values that never repeat.

    A float (a cost, a duration) is the entry's fixed head for its key, kept, and its 8 bytes.
    """
    if value.__class__ is float:
        head = _DOUBLE_HEADS.get(key)
        if head is None:
            key_only = _field(b"\x0a", key.encode())
            head = b"\x4a" + varint(len(key_only) + 11) + key_only + b"\x12\x09\x21"
            if len(_DOUBLE_HEADS) < _MAX_CACHED:
                _DOUBLE_HEADS[key] = head
        return head + _DOUBLE(value)
    key_field = _KEYS.get(key)
    if key_field is None:
        key_field = _field(b"\x0a", key.encode())
        if len(_KEYS) < _MAX_CACHED:
            _KEYS[key] = key_field
    encoded = any_value(value)
    body = key_field + b"\x12" + varint(len(encoded)) + encoded
    return b"\x4a" + varint(len(body)) + body


def span_tail(error: bool, remote_parent: bool) -> bytes:
    """Status (ERROR, or left unset) and flags. (Fields may come in any order, so this need not be last.)"""
    flags = _FLAGS_REMOTE if remote_parent else _FLAGS_LOCAL
    return _STATUS_ERROR + flags if error else flags


class AttributeFields:
    """Cached `Span.attributes` entries for str, int, bool, float and tuple values, by class, key and value.

    The class is part of the key because True == 1. At most 512 values are kept per key; a full
    key is emptied (the values that repeat are back at once).
    """

    def __init__(self) -> None:
        self._by_class: dict[type, dict[str, dict[Any, bytes]]] = {str: {}, int: {}, bool: {}, float: {}, tuple: {}}

    def field(self, key: str, value: Any) -> bytes:
        """The field; None gives nothing (the SDK leaves such attributes out too)."""
        by_key = self._by_class.get(value.__class__)
        if by_key is None:
            return b"" if value is None else attribute(key, value)
        values = by_key.get(key)
        if values is None:
            values = by_key[key] = {}
        found = values.get(value)
        if found is None:
            if len(values) >= _MAX_CACHED:
                values.clear()
            found = values[value] = attribute(key, value)
        return found


def span_head(name: str, kind: int, attributes: Mapping[str, Any]) -> bytes:
    """Name, kind and some attributes of a span: the part that is the same for many spans."""
    return (_field(b"\x2a", name.encode()) + bytes((0x30, kind))
            + b"".join(attribute(k, v) for k, v in attributes.items() if v is not None))


def times(start: int, end: int) -> bytes:
    return _TIMES(0x39, start, 0x41, end)


def trace_state_field(trace_state: str) -> bytes:
    return _field(b"\x1a", trace_state.encode()) if trace_state else b""


PARENT_SPAN_ID = b"\x22\x08"
"""The tag and length of `Span.parent_span_id` (field 4, 8 bytes), which the span id follows."""


def span_lead(trace_id: bytes) -> bytes:
    """`Span.trace_id` (16 bytes) and the tag and length of `span_id`: every span of a trace starts with this,
    followed by its 8-byte span id."""
    return b"\x0a\x10" + trace_id + b"\x12\x08"


def span(*parts: bytes) -> bytes:
    """One `ScopeSpans.spans` entry (field 2) from the `Span` fields in `parts`."""
    body = b"".join(parts)
    return b"\x12" + varint(len(body)) + body


class ExportRequest:
    """Wraps encoded spans into an `ExportTraceServiceRequest` under one resource and scope."""

    def __init__(self, resource: Mapping[str, Any], scope_name: str, scope_version: str) -> None:
        self._resource = _field(b"\x0a", b"".join(_field(b"\x0a", key_value(k, v)) for k, v in resource.items()))
        self._scope = _field(b"\x0a", _field(b"\x0a", scope_name.encode()) + _field(b"\x12", scope_version.encode()))

    def __call__(self, spans: list[bytes]) -> bytes:
        """The request body, in one join: a batch is hundreds of kilobytes, each copy of it costs."""
        scope_size = len(self._scope) + sum(map(len, spans))
        scope_head = b"\x12" + varint(scope_size)
        resource_size = len(self._resource) + len(scope_head) + scope_size
        return b"".join([b"\x0a" + varint(resource_size) + self._resource + scope_head + self._scope, *spans])
