"""LunarySink: each call becomes a `start` and an `end` (or `error`) run event, POSTed in batches.

`POST {LUNARY_API_URL}/v1/runs/ingest` with `{"events": [...]}`. The run id is the event id (a
UUID, as Lunary wants), so a re-delivered call updates its run instead of creating another; a
re-sent `start` fails on the server with "already exists", which counts as success here. The
reply is 200 even when some events failed: its `results` are checked per run and only the
failed calls are reported, to be retried. Calls that are not model calls (model lists, files)
are not Lunary runs and are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Self

import orjson

from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.shapes import LLM_KINDS, input_of, output_message, params_of
from llm_proxy.dispatcher.sinks import RecordError, SinkPartialError, SinkRetryableError
from llm_proxy.dispatcher.sinks.http import HttpPoster, status_error
from llm_proxy.errors import ConfigError
from llm_proxy.events import Event
from llm_proxy.settings import Settings

INGEST_PATH = "/v1/runs/ingest"
RUN_TYPES = {**dict.fromkeys(LLM_KINDS | {"transcriptions", "translations"}, "llm"), "embeddings": "embed"}
METADATA_FIELDS = ("request_id", "project_id", "token_id", "path", "status", "provider", "stream",
                   "cache_status", "duration_ms", "upstream_ms", "cost_usd", "cost_known", "usage_estimated",
                   "reasoning_tokens", "trace_id")


class LunarySink:
    def __init__(self, url: str, key: str, *, timeout: float = 30.0) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith(INGEST_PATH) else base + INGEST_PATH
        self.key = key
        self.poster = HttpPoster("lunary", timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        key = settings.dispatcher.api_key or settings.lunary.key
        if not key:
            raise ConfigError(["LUNARY_PUBLIC_KEY: the lunary sink needs a project key (or --api-key)"])
        return cls(settings.dispatcher.endpoint or settings.lunary.url, key,
                   timeout=settings.dispatcher.send_timeout)

    async def send(self, records: Sequence[SinkRecord]) -> None:
        events: list[dict[str, Any]] = []
        for record in records:
            events += run_events(record)
        if not events:
            return
        reply = await self.poster.post(self.url, orjson.dumps({"events": events}),
                                       {"Authorization": f"Bearer {self.key}"})
        error = status_error("lunary", reply)
        if error is not None:
            raise error
        failures = failed_runs(reply.text, records)
        if failures:
            raise SinkPartialError(failures)

    async def aclose(self) -> None:
        await self.poster.aclose()


def failed_runs(reply: str, records: Sequence[SinkRecord]) -> dict[int, RecordError]:
    try:
        results = orjson.loads(reply).get("results") or []
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    errors: dict[str, str] = {}
    for result in results:
        if isinstance(result, dict) and result.get("success") is False:
            message = str(result.get("error") or "failed")
            if "already exists" not in message:
                errors[str(result.get("id"))] = message
    return {index: SinkRetryableError(f"lunary refused run {record.id}: {errors[record.id]}")
            for index, record in enumerate(records) if record.id in errors}


def run_events(record: SinkRecord) -> list[dict[str, Any]]:
    event = record.event
    run_type = RUN_TYPES.get(record.api)
    if run_type is None or event.method != "POST":
        return []
    start: dict[str, Any] = {
        "type": run_type, "event": "start", "runId": event.event_id, "name": event.model or "unknown",
        "timestamp": iso(event.started_at), "input": input_of(record.api, record.request),
        "params": params_of(record.request), "runtime": "llm-proxy", "tags": tags_of(event),
        "metadata": metadata_of(record),
    }
    if event.user_id:
        start["userId"] = event.user_id
        start["userProps"] = {k: v for k, v in event.token_metadata.items() if k not in ("user_id", "tags")}
    ended = max(event.ended_at, event.started_at + timedelta(milliseconds=1))
    finish: dict[str, Any] = {"type": run_type, "runId": event.event_id, "timestamp": iso(ended)}
    if 200 <= event.status < 400 and not event.error:
        finish.update(event="end", output=output_message(record.api, record.response))
        usage = tokens_usage(event)
        if usage is not None:
            finish["tokensUsage"] = usage
    else:
        finish.update(event="error", error={"message": error_message(record)})
    return [start, finish]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def tags_of(event: Event) -> list[str]:
    tags = event.token_metadata.get("tags")
    if isinstance(tags, str):
        return [tag.strip() for tag in tags.split(",") if tag.strip()]
    if isinstance(tags, list):
        return [str(tag) for tag in tags]
    return []


def metadata_of(record: SinkRecord) -> dict[str, Any]:
    """First-level scalars only: Lunary drops everything else."""
    event = record.event
    metadata = {name: getattr(event, name) for name in METADATA_FIELDS if getattr(event, name) is not None}
    if record.verbose:
        metadata.update({f"response_header_{k}": v for k, v in event.response_headers.items()})
    return metadata


def tokens_usage(event: Event) -> dict[str, int] | None:
    if event.input_tokens is None and event.output_tokens is None:
        return None
    usage = {"prompt": event.input_tokens or 0, "completion": event.output_tokens or 0}
    if event.cached_tokens:
        usage["promptCached"] = event.cached_tokens
    return usage


def error_message(record: SinkRecord) -> str:
    response = record.response
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        message = response["error"].get("message")
        if message:
            return str(message)
    return record.event.error or f"HTTP {record.event.status}"
