"""Cheap usage extraction from a captured response, done on the proxy when the answer carries it.

Full decoding (compressed bodies, SSE merging, token estimation, cost) is the dispatcher's
transformer's job; here we only read an explicit `usage` object when it is plainly there.
"""

from __future__ import annotations

from typing import Any

import orjson


def usage_from_response(body: bytes, content_type: str, encoded: bool) -> dict[str, int] | None:
    if encoded or b'"usage"' not in body:
        return None
    if content_type.startswith("text/event-stream"):
        return _from_sse(body)
    if content_type.startswith("application/json"):
        return usage_from_json(body)[0]
    return None


def usage_from_json(body: bytes) -> tuple[dict[str, int] | None, dict[str, Any] | None]:
    """The usage of a plain JSON answer, and the answer parsed (None unless a JSON object with a usage)."""
    if b'"usage"' not in body:
        return None, None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    return normalize_usage(document.get("usage")), document


def _from_sse(body: bytes) -> dict[str, int] | None:
    for line in reversed(body.split(b"\n")):
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            document = orjson.loads(line[5:].strip())
        except orjson.JSONDecodeError:
            continue
        if not isinstance(document, dict):
            continue
        usage = document.get("usage")
        if usage is None and isinstance(document.get("response"), dict):
            usage = document["response"].get("usage")
        found = normalize_usage(usage)
        if found:
            return found
    return None


def normalize_usage(usage: Any) -> dict[str, int] | None:
    """Chat/completions (`prompt_tokens`…) and Responses (`input_tokens`…) shapes, unified."""
    if not isinstance(usage, dict):
        return None
    input_tokens = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    output_tokens = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    if input_tokens is None and output_tokens is None:
        return None
    details_in = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    details_out = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    result = {
        "input_tokens": input_tokens or 0,
        "output_tokens": output_tokens or 0,
        "total_tokens": _int(usage.get("total_tokens")) or (input_tokens or 0) + (output_tokens or 0),
        "cached_tokens": _int(details_in.get("cached_tokens") if isinstance(details_in, dict) else None) or 0,
        "reasoning_tokens": _int(details_out.get("reasoning_tokens") if isinstance(details_out, dict) else None)
        or 0,
    }
    return result


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
