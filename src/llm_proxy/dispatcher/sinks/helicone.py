"""HeliconeSink: one manual-logger record per call, sent concurrently, each confirmed on its own.

Route: `/oai/v1/log` for OpenAI-shaped calls (Helicone then reads model, usage and cost from the
bodies), `/custom/v1/log` for anything else. Helicone has no batch endpoint, so a batch is many
POSTs; each record's outcome is reported separately, so a retry re-sends only the records that
failed. A 200 whose body is `{"error": ...}` means Helicone's storage step failed: retried.

The `Helicone-*` headers go both in `providerRequest.meta` and on the POST (workers read one or
the other). `Helicone-Request-Id` must be a UUID of version 1–5 or Helicone replaces it, so it
is a UUIDv5 derived from the event id: the same call always gets the same Helicone id.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self
from urllib.parse import quote

import orjson

from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.sinks import RecordError, SinkPartialError, SinkRejectedError, SinkRetryableError
from llm_proxy.dispatcher.sinks.http import HttpPoster, status_error
from llm_proxy.errors import ConfigError
from llm_proxy.events import Event, sanitize_headers
from llm_proxy.settings import Settings

OPENAI_ROUTE, CUSTOM_ROUTE = "/oai/v1/log", "/custom/v1/log"
OPENAI_KINDS = frozenset({"chat", "completions", "responses", "embeddings"})
MAX_BODY = 10 * 1024 * 1024
REQUEST_ID_NAMESPACE = uuid.UUID("6f0c3b9e-5f43-4c61-9a57-0d6b1c0f7a21")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]+")


class HeliconeSink:
    def __init__(self, url: str, key: str, *, timeout: float = 30.0, concurrency: int = 8) -> None:
        self.base = re.sub(r"/(oai|custom)/v1/log$", "", url.rstrip("/"))
        self.key = key
        self.poster = HttpPoster("helicone", timeout, limit=concurrency)
        self.gate = asyncio.Semaphore(concurrency)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        key = settings.dispatcher.api_key or settings.helicone.key
        if not key:
            raise ConfigError(["HELICONE_API_KEY: the helicone sink needs an API key (or --api-key)"])
        return cls(settings.dispatcher.endpoint or settings.helicone.url, key,
                   timeout=settings.dispatcher.send_timeout, concurrency=settings.dispatcher.concurrency)

    async def send(self, records: Sequence[SinkRecord]) -> None:
        outcomes = await asyncio.gather(*(self._send_one(record) for record in records))
        failures = {index: error for index, error in enumerate(outcomes) if error is not None}
        if failures:
            raise SinkPartialError(failures)

    async def _send_one(self, record: SinkRecord) -> RecordError | None:
        if record.event.method != "POST":
            return None
        headers = helicone_headers(record.event)
        body = orjson.dumps(log_record(record, headers))
        if len(body) > MAX_BODY:
            return SinkRejectedError(f"helicone record of {len(body)} bytes exceeds the 10 MiB limit")
        route = OPENAI_ROUTE if record.api in OPENAI_KINDS else CUSTOM_ROUTE
        async with self.gate:
            try:
                reply = await self.poster.post(self.base + route, body,
                                               {**headers, "Authorization": f"Bearer {self.key}"})
            except SinkRetryableError as exc:
                return exc
        error = status_error("helicone", reply)
        if error is None and reply.text.lstrip().startswith("{") and '"error"' in reply.text:
            return SinkRetryableError(f"helicone could not store the record: {reply.text[:300]}")
        return error

    async def aclose(self) -> None:
        await self.poster.aclose()


def log_record(record: SinkRecord, meta: dict[str, str]) -> dict[str, Any]:
    event = record.event
    request = record.request if isinstance(record.request, dict) else {"body": record.request}
    response: dict[str, Any] = {"status": event.status, "headers": sanitize_headers(event.response_headers.items()),
                                "json": {}}
    if record.stream_text is not None:
        response["textBody"] = record.stream_text
    elif isinstance(record.response, dict):
        response["json"] = record.response
    elif record.response is not None:
        response["textBody"] = str(record.response)
    timing: dict[str, Any] = {"startTime": _split(event.started_at), "endTime": _split(event.ended_at)}
    if event.stream and event.first_byte_at is not None:
        timing["timeToFirstToken"] = max(0, round((event.first_byte_at - event.started_at).total_seconds() * 1000))
    return {"providerRequest": {"url": event.path or "custom-model-nopath", "json": request, "meta": meta},
            "providerResponse": response, "timing": timing}


def _split(moment: datetime) -> dict[str, int]:
    stamp = moment.timestamp()
    seconds = int(stamp)
    return {"seconds": seconds, "milliseconds": min(999, round((stamp - seconds) * 1000))}


def helicone_headers(event: Event) -> dict[str, str]:
    headers = {"Helicone-Request-Id": str(uuid.uuid5(REQUEST_ID_NAMESPACE, event.event_id))}
    if event.user_id:
        headers["Helicone-User-Id"] = header_value(event.user_id)
    properties: dict[str, Any] = {"Event-Id": event.event_id, "Proxy-Request-Id": event.request_id,
                                  "Project-Id": event.project_id, "Token-Id": event.token_id}
    properties.update({k: v for k, v in event.token_metadata.items() if k != "user_id"})
    for name, value in properties.items():
        if value is None or isinstance(value, dict | list):
            continue
        headers[f"Helicone-Property-{_UNSAFE_NAME.sub('-', str(name)).strip('-') or 'x'}"] = header_value(value)
    return headers


def header_value(value: Any) -> str:
    """A header-safe string: Latin-1 printable, anything else percent-encoded."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~")
