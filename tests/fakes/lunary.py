"""A local Lunary ingestion server that checks payloads the way Lunary does (external-formats §2).

`POST /v1/runs/ingest` with `Authorization: Bearer <key>`; body `{"events": [...]}`; events are
handled in timestamp order; the reply is 200 `{"results": [{id, success, error?}]}` even when some
events fail. Schema violations are answered as per-event failures and recorded in `problems`, so
a test asserts `problems == []`. Faults: `fail_statuses` (whole-request statuses for the next
calls, e.g. 503 or 429 with `retry_after`), `fail_runs` (run id → calls left in which all its events fail),
`max_events` (more events in one call → 413).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

from tests.fakes.server import FakeServer

RUN_TYPES = {"llm", "chain", "agent", "tool", "log", "embed", "retriever", "chat", "convo", "message", "thread"}
EVENT_NAMES = {"start", "end", "error", "feedback", "update", "chat", "custom-event"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


class FakeLunary(FakeServer):
    def __init__(self, key: str = "lunary-test-key") -> None:
        super().__init__()
        self.key = key
        self.runs: dict[str, dict[str, dict[str, Any]]] = {}
        """run id → event name (start/end/error) → the event as last accepted."""
        self.calls: list[list[dict[str, Any]]] = []
        self.problems: list[str] = []
        self.fail_statuses: list[int] = []
        self.retry_after: str | None = None
        self.fail_runs: dict[str, int] = {}
        self.max_events: int | None = None
        self.app.router.add_post("/v1/runs/ingest", self.ingest)

    async def ingest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.Response(status=401, text="Invalid API key")
        if self.fail_statuses:
            status = self.fail_statuses.pop(0)
            headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
            return web.Response(status=status, text="Sometimes You Just Have to Slow Down.", headers=headers)
        body = await request.json()
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            return web.Response(status=500, text="missing events")
        if self.max_events is not None and len(events) > self.max_events:
            return web.Response(status=413, text="request entity too large")
        self.calls.append(events)
        failing = {str(e.get("runId")) for e in events if self.fail_runs.get(str(e.get("runId")), 0) > 0}
        for run_id in failing:
            self.fail_runs[run_id] -= 1
        ordered = sorted(events, key=lambda e: str(e.get("timestamp")))
        return web.json_response({"results": [self._ingest_one(event, failing) for event in ordered]})

    def _ingest_one(self, event: dict[str, Any], failing: set[str]) -> dict[str, Any]:
        run_id = str(event.get("runId"))
        problem = self.validate(event)
        if problem:
            self.problems.append(f"{run_id}: {problem}")
            return {"id": run_id, "success": False, "error": problem}
        if run_id in failing:
            return {"id": run_id, "success": False, "error": "injected failure"}
        stored = self.runs.setdefault(run_id, {})
        if event["event"] == "start" and "start" in stored:
            return {"id": run_id, "success": False, "error": "Run with this ID already exists"}
        if event["event"] in ("end", "error") and "start" not in stored:
            self.problems.append(f"{run_id}: {event['event']} before its start")
        stored[event["event"]] = event
        return {"id": run_id, "success": True}

    @staticmethod
    def validate(event: dict[str, Any]) -> str | None:
        checks = (
            (event.get("type") in RUN_TYPES, f"bad type {event.get('type')!r}"),
            (event.get("event") in EVENT_NAMES, f"bad event {event.get('event')!r}"),
            (_is_uuid(event.get("runId")), f"runId {event.get('runId')!r} is not a UUID"),
            (isinstance(event.get("timestamp"), str) and bool(ISO.match(event["timestamp"])), "bad timestamp"),
            (event.get("event") != "start" or isinstance(event.get("name"), str), "start without a name"),
            (_scalars_only(event.get("metadata")), "metadata must hold first-level scalars"),
            (_tokens_usage_ok(event.get("tokensUsage")), "bad tokensUsage"),
            (event.get("tags") is None or _string_list(event.get("tags")), "tags must be strings"),
            (event.get("userId") is None or isinstance(event.get("userId"), str), "userId must be a string"),
            (event.get("userProps") is None or isinstance(event.get("userProps"), dict), "userProps not an object"),
            (event.get("event") != "error" or isinstance((event.get("error") or {}).get("message"), str),
             "error event without error.message"),
        )
        for ok, message in checks:
            if not ok:
                return message
        datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        return None


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _scalars_only(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    scalar = (str, int, float, bool)
    return all(isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))
               for v in value.values())


def _tokens_usage_ok(value: Any) -> bool:
    if value is None:
        return True
    return (isinstance(value, dict) and all(isinstance(value.get(k), int) for k in ("prompt", "completion"))
            and set(value) <= {"prompt", "completion", "promptCached"})


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)
