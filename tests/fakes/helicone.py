"""A local Helicone manual-logger endpoint that validates like the worker (external-formats §1).

Routes `/oai/v1/log` and `/custom/v1/log`; `Authorization: Bearer <key>` or 401; the body must
have `providerRequest{url, json, meta}`, `providerResponse{json, status, headers[, textBody]}`,
`timing{startTime, endTime}` with `{seconds, milliseconds}` and start ≤ end, else 400
`{"error": ...}` (also recorded in `problems`). A streamed request (`json.stream == true`) must
carry its SSE text in `textBody`. `Helicone-Request-Id` must be a UUID of version 1–5.

Faults: `fail_statuses` (answers for the next requests), `fail_events` (event id → statuses to
answer, one per attempt, for that record only), `store_errors` (event ids whose next attempt gets
`200 {"error": ...}`, a failed storage step), `held` (hang until released).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from tests.fakes.server import FakeServer

UUID_V1_5 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)


class FakeHelicone(FakeServer):
    def __init__(self, key: str = "helicone-test-key") -> None:
        super().__init__()
        self.key = key
        self.records: dict[str, dict[str, Any]] = {}
        """Helicone request id → {"route", "body", "headers"} of the record as stored."""
        self.posts: dict[str, int] = {}
        """Helicone request id → how many times it was stored (more than 1 is a duplicate)."""
        self.problems: list[str] = []
        self.fail_statuses: list[int] = []
        self.fail_events: dict[str, list[int]] = {}
        self.store_errors: set[str] = set()
        self.held: asyncio.Event | None = None
        """When set to an unset Event, requests wait until it is set (a hung service); a request whose
        client went away meanwhile is then dropped unstored, as a real server would."""
        self.started = 0
        for route in ("/oai/v1/log", "/custom/v1/log"):
            self.app.router.add_post(route, self.log)

    def by_event(self, event_id: str) -> dict[str, Any]:
        for record in self.records.values():
            if record["headers"].get("Helicone-Property-Event-Id") == event_id:
                return record
        raise KeyError(event_id)

    async def log(self, request: web.Request) -> web.Response:
        self.started += 1
        if self.held is not None:
            await self.held.wait()
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=503)
        refusal = self._auth_or_fault(request)
        if refusal is not None:
            return refusal
        body = await request.json()
        problem = self.validate(body, request.headers)
        if problem:
            self.problems.append(problem)
            return web.json_response({"error": problem}, status=400)
        request_id = request.headers["Helicone-Request-Id"]
        self.records[request_id] = {"route": request.path, "body": body, "headers": dict(request.headers)}
        self.posts[request_id] = self.posts.get(request_id, 0) + 1
        return web.Response(text="ok", headers={"helicone-id": request_id})

    def _auth_or_fault(self, request: web.Request) -> web.Response | None:
        if not request.headers.get("Authorization"):
            return web.Response(status=401, text="Unauthorized")
        if request.headers["Authorization"] != f"Bearer {self.key}":
            return web.json_response({"error": "invalid key"}, status=401)
        if self.fail_statuses:
            return web.Response(status=self.fail_statuses.pop(0), text="injected")
        event_id = request.headers.get("Helicone-Property-Event-Id", "")
        if self.fail_events.get(event_id):
            return web.Response(status=self.fail_events[event_id].pop(0), text="injected for this record")
        if event_id in self.store_errors:
            self.store_errors.discard(event_id)
            return web.json_response({"error": "could not insert request"})
        return None

    @staticmethod
    def validate(body: dict[str, Any], headers: Any) -> str | None:
        req, resp, timing = body.get("providerRequest"), body.get("providerResponse"), body.get("timing")
        if not all(isinstance(part, dict) for part in (req, resp, timing)):
            return "providerRequest, providerResponse and timing are required objects"
        assert isinstance(req, dict)
        assert isinstance(resp, dict)
        assert isinstance(timing, dict)
        checks = (
            (isinstance(req.get("url"), str), "providerRequest.url must be a string"),
            (isinstance(req.get("meta"), dict) and all(isinstance(v, str) for v in req["meta"].values()),
             "providerRequest.meta must map strings to strings"),
            ("json" in req, "Invalid providerRequest: 'json' is undefined"),
            ("json" in resp, "Invalid providerResponse: 'json' is undefined"),
            (isinstance(resp.get("status"), int), "providerResponse.status must be a number"),
            (isinstance(resp.get("headers"), dict), "providerResponse.headers must be an object"),
            (not (isinstance(req.get("json"), dict) and req["json"].get("stream") is True)
             or "data:" in str(resp.get("textBody", "")), "a stream needs its SSE text in textBody"),
            (bool(UUID_V1_5.match(headers.get("Helicone-Request-Id", ""))), "Helicone-Request-Id not a UUID v1-5"),
        )
        for ok, message in checks:
            if not ok:
                return message
        return _timing_problem(timing)


def _timing_problem(timing: dict[str, Any]) -> str | None:
    stamps = []
    for name in ("startTime", "endTime"):
        part = timing.get(name)
        if not (isinstance(part, dict) and isinstance(part.get("seconds"), int)
                and isinstance(part.get("milliseconds"), int) and 0 <= part["milliseconds"] <= 999
                and part["seconds"] >= 0):
            return f"timing.{name} must be {{seconds, milliseconds}}"
        stamps.append(part["seconds"] * 1000 + part["milliseconds"])
    if stamps[0] > stamps[1]:
        return "timing.startTime is after timing.endTime"
    ttft = timing.get("timeToFirstToken")
    if ttft is not None and (not isinstance(ttft, int) or ttft < 0):
        return "timing.timeToFirstToken must be a non-negative number of ms"
    return None
