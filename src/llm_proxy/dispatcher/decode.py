"""Captured bodies back to something a person and a sink can read.

Bodies arrive capped (see `events.cap_body`), so every step tolerates a cut: decompressors
return what they could inflate, a UTF-8 sequence cut at the end is dropped, and JSON that
does not parse stays text. Binary and multipart bodies become a placeholder string naming their
size; they are never sent to a sink.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

BINARY_TYPES = ("audio/", "image/", "video/", "application/octet-stream", "application/pdf",
                "application/zip")


@dataclass(frozen=True, slots=True)
class Body:
    """A decoded body: `value` is a JSON value, the text, or a placeholder; `text` when textual."""

    value: Any
    text: str | None = None
    problem: str | None = None
    """Why decoding stopped short (unknown encoding, corrupt data), for the record's metadata."""


EMPTY = Body(None, "")


def decompress(data: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    """Undo `Content-Encoding` (several codings are undone last first); (data, problem)."""
    if not encoding:
        return data, None
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding in ("identity", ""):
            continue
        try:
            data = _inflate(data, coding)
        except (zlib.error, OSError, ValueError) as exc:
            return data, f"{coding} body could not be decoded: {exc}"
    return data, None


def _inflate(data: bytes, coding: str) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=31).decompress(data)
    if coding == "deflate":
        try:
            return zlib.decompressobj(wbits=15).decompress(data)
        except zlib.error:  # many servers send raw deflate without the zlib header
            return zlib.decompressobj(wbits=-15).decompress(data)
    if coding == "br":
        import brotli

        try:
            return bytes(brotli.Decompressor().process(data))
        except brotli.error as exc:
            raise ValueError(str(exc)) from None
    if coding == "zstd":
        import zstandard

        try:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"unknown content-encoding {coding!r}")


def utf8_text(data: bytes) -> str | None:
    """The text, or None for binary; a multi-byte character cut by the capture cap is dropped."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8", "strict")
        return None


def decode_body(data: bytes, content_type: str = "", encoding: str | None = None) -> Body:
    if not data:
        return EMPTY
    kind = content_type.lower()
    if "multipart/" in kind:
        return Body(f"<multipart body omitted: {len(data)} bytes>")
    data, problem = decompress(data, encoding)
    if kind.startswith(BINARY_TYPES):
        return Body(f"<binary body omitted: {len(data)} bytes>", problem=problem)
    text = utf8_text(data) if problem is None else None
    if text is None:
        return Body(f"<binary body omitted: {len(data)} bytes>", problem=problem)
    if "json" in kind or text.lstrip()[:1] in ("{", "["):
        try:
            return Body(orjson.loads(data), text)
        except orjson.JSONDecodeError:
            pass
    return Body(text, text)


def looks_like_sse(text: str | None, content_type: str = "") -> bool:
    if not text:
        return False
    if content_type.lower().startswith("text/event-stream"):
        return True
    head = text.lstrip()[:7]
    return head.startswith(("data:", "event:"))
