"""Server-sent-events framing as OpenAI writes it."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def data_frame(payload: Any) -> bytes:
    """`data: {json}` + blank line: chat and legacy completion chunks."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def event_frame(payload: dict[str, Any]) -> bytes:
    """`event: <type>` + `data: {json}`: Responses API events, keyed by their `type`."""
    return b"event: " + str(payload["type"]).encode() + b"\n" + data_frame(payload)
