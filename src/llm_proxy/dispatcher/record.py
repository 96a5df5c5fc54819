"""SinkRecord: an event after the transformer, as every sink receives it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from llm_proxy.events import Event, sanitize_headers


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """One call, decoded once for all sinks.

    `event` has model, usage and cost filled in. `request` and `response` are the decoded bodies:
    a JSON value, text, or a placeholder string for binary and multipart bodies; a streamed
    response is merged into the object the non-streamed call would have returned, and its raw
    SSE text is kept in `stream_text`. `api` names the OpenAI API shape (see `transform.API_KINDS`).
    """

    event: Event
    api: str
    request: Any
    response: Any
    stream_text: str | None = None
    verbose: bool = False

    @property
    def id(self) -> str:
        return self.event.event_id


_RAW_FIELDS = ("request_body", "response_body")


def record_document(record: SinkRecord, *, raw_bodies: bool) -> dict[str, Any]:
    """The record as one JSON object: the event's wire fields plus `api`, `request`, `response`.

    With `raw_bodies` the base64 bodies stay, so the line can be decoded again with
    `events.decode_event` (a file sink's output can be replayed); without, they are dropped and
    only the decoded bodies remain. Headers that may carry a credential are dropped either way.
    """
    document: dict[str, Any] = msgspec.to_builtins(record.event)
    for name in ("request_headers", "response_headers"):  # again: the event may come from any producer
        document[name] = sanitize_headers(getattr(record.event, name).items())
    if not raw_bodies:
        for name in _RAW_FIELDS:
            document.pop(name, None)
    document["api"] = record.api
    document["request"] = record.request
    document["response"] = record.response
    return document
