"""InstrumentationMiddleware: turns every /v1/* call into one `Event` and one telemetry stop.

It wraps `send`: the status and headers are noted at `http.response.start` (where the
`X-LLM-Proxy-Overhead-Ms` / `X-LLM-Proxy-Upstream-Ms` headers are added), and each body chunk
is passed on first and then copied into a capped buffer, so the client sees every byte as soon
as the endpoint produces it. The request body comes from the `RequestContext` the endpoint
filled (it reads the body anyway), so nothing is read twice. After the last byte went out (or
the client left) usage and cost are worked out once; the event goes to the bus (`publish` never
blocks or raises) and the same numbers go to `llm_proxy.proxy.request.stop` (or `.exception`)
for the metrics and tracing handlers. Cache hits publish no event but do emit the stop.

The last body message (`more_body` false: for a non-streamed answer, the whole body) is held
until the event is published: a client that has the whole answer knows its event exists, even if
the process is killed the next moment (the Redis bus's write-ahead log has it). It costs that
message the ~15 µs of building the event.

The timing headers are measured when the response starts: Upstream-Ms is the time from sending
the upstream request to receiving its headers (its whole body when the endpoint read the body
first, to price it), Overhead-Ms the rest of the time up to then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from llm_proxy.bus import EventBus
from llm_proxy.context import RequestContext
from llm_proxy.events import Event, cap_body, sanitize_headers
from llm_proxy.middleware.usage import usage_from_response
from llm_proxy.settings import ObservabilitySettings
from llm_proxy.telemetry import Telemetry
from llm_proxy.telemetry.cost import Cost, PriceTable
from llm_proxy.tokens.budget import TICKET_KEY

log = logging.getLogger("llm_proxy.instrumentation")

CLIENT_CLOSED_STATUS = 499
NO_EVENT_CACHE_STATUSES = frozenset({"hit", "conditional-hit"})
START = "llm_proxy.proxy.request.start"
STOP = "llm_proxy.proxy.request.stop"
EXCEPTION = "llm_proxy.proxy.request.exception"
COST = "llm_proxy.cost.calculated"
TAIL_BYTES = 16 * 1024
_NO_USAGE = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0}


class _Capture:
    __slots__ = ("body", "content_encoding", "content_type", "first_chunk", "headers", "limit", "size", "status",
                 "tail")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.size = 0
        self.first_chunk: float | None = None
        self.content_type = ""
        self.content_encoding: str | None = None
        self.tail = b""
        """The last bytes of a body longer than `limit`: a stream's usage is in its last frames."""

    def add(self, chunk: bytes) -> None:
        """A body chunk that went (or is about to go) to the client."""
        if chunk and self.first_chunk is None:
            self.first_chunk = time.monotonic()
        self.size += len(chunk)
        room = self.limit - len(self.body)
        if room > 0 and chunk:
            self.body += chunk[:room]
        if self.size > self.limit:
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    def usage(self) -> dict[str, int] | None:
        encoded = self.content_encoding is not None
        found = usage_from_response(bytes(self.body), self.content_type, encoded)
        if found is None and self.tail and self.content_type.startswith("text/event-stream"):
            found = usage_from_response(self.tail, self.content_type, encoded)
        return found

    def note_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-type":
                self.content_type = value.decode("latin-1")
            elif lowered == b"content-encoding":
                self.content_encoding = value.decode("latin-1")


class InstrumentationMiddleware:
    def __init__(self, app: Any, *, bus: EventBus | None, settings: ObservabilitySettings,
                 telemetry: Telemetry | None = None, prices: PriceTable | None = None,
                 timing_headers: bool = True,
                 trace_start: Callable[[dict[str, Any], RequestContext], None] | None = None,
                 trace_end: Callable[[RequestContext, dict[str, Any], dict[str, Any]], None] | None = None) -> None:
        self.app = app
        self.trace_start = trace_start
        self.trace_end = trace_end
        """Tracing's start and end of a call: called directly, every call, so they cost no telemetry events;
        `trace_end` gets the measurements and metadata of the stop (or exception) event."""
        self.bus = bus
        self.max_request = settings.max_request_body_bytes
        self.max_response = settings.max_response_body_bytes
        self.keep_client_ip = settings.client_ip
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.prices = prices
        self.timing_headers = timing_headers

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        ctx = RequestContext(started_at=datetime.now(UTC), started=time.monotonic())
        scope["llm_proxy"] = ctx
        capture = _Capture(self.max_response)
        if self.trace_start is not None:
            self.trace_start(scope, ctx)
        if self.telemetry.has_handlers(START):
            self.telemetry.execute(START, {"monotonic_time": ctx.started, "system_time": time.time()},
                                   {"method": scope["method"], "path": scope["path"], "headers": scope["headers"],
                                    "context": ctx})

        last: list[dict[str, Any]] = []

        async def send_and_capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    await send(message)
                else:
                    last.append(message)
                capture.add(message.get("body", b""))
            elif message["type"] == "http.response.start":
                capture.status = message["status"]
                capture.note_headers(message.get("headers", []))
                await send(_with_timing(message, ctx) if self.timing_headers else message)
            else:
                await send(message)

        failure: BaseException | None = None
        try:
            await self.app(scope, receive, send_and_capture)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            spent = self._finish(scope, ctx, capture, failure)
            ticket = scope.get(TICKET_KEY)
            if ticket is not None:  # the budget guard admitted this call: hand it the cost
                ticket.settle(spent)
        if last:
            await send(last[0])

    def _finish(self, scope: dict[str, Any], ctx: RequestContext, capture: _Capture,
                failure: BaseException | None) -> float | None:
        """Publish and emit; return the cost (0 when unpriced, None without usage) for budgets."""
        spent = None
        try:
            ended = time.monotonic()
            usage = None
            if ctx.cache_status not in NO_EVENT_CACHE_STATUSES:  # a hit replays usage nobody pays for
                usage = ctx.usage or capture.usage()
            cost = self._price(ctx, usage)
            if usage is not None:
                spent = cost.total if cost is not None else 0.0
            event = None
            if self.bus is not None and ctx.cache_status not in NO_EVENT_CACHE_STATUSES:
                event = self._event(scope, ctx, capture, usage, cost, ended)
                self.bus.publish(event)
            self._emit(scope, ctx, capture, usage, cost, ended, event, failure)
        except Exception:  # the request is done; an event bug must never surface to the client
            log.exception("could not build the event of request %s", ctx.request_id)
        return spent

    def _price(self, ctx: RequestContext, usage: dict[str, int] | None) -> Cost | None:
        if usage is None or self.prices is None:
            return None
        return self.prices.price(ctx.provider, ctx.model, usage["input_tokens"], usage["output_tokens"],
                                 usage["cached_tokens"], usage["reasoning_tokens"])

    def _emit(self, scope: dict[str, Any], ctx: RequestContext, capture: _Capture, usage: dict[str, int] | None,
              cost: Cost | None, ended: float, event: Event | None, failure: BaseException | None) -> None:
        telemetry = self.telemetry
        name = STOP if failure is None else EXCEPTION
        if cost is not None and telemetry.has_handlers(COST):
            telemetry.execute(COST, {"cost_usd": cost.total, "input": cost.input, "cached_input": cost.cached_input,
                                     "output": cost.output, "reasoning": cost.reasoning},
                              {"provider": ctx.provider, "model": ctx.model, "price_model": cost.price_model,
                               "project_id": ctx.project_id, "token_id": ctx.token_id, "request_id": ctx.request_id})
        trace_end = self.trace_end
        if trace_end is None and not telemetry.has_handlers(name):
            return
        measurements = _measurements(ctx, capture, usage, cost, ended)
        status = capture.status or (CLIENT_CLOSED_STATUS if ctx.client_disconnected else 500)
        metadata = {
            "request_id": ctx.request_id, "method": scope["method"], "path": scope["path"], "status": status,
            "provider": ctx.provider, "model": ctx.model, "stream": ctx.stream, "project_id": ctx.project_id,
            "token_id": ctx.token_id, "user_id": ctx.user_id, "cache_status": ctx.cache_status,
            "error_code": ctx.error_code, "upstream_error": ctx.upstream_error,
            "client_disconnected": ctx.client_disconnected, "trace_id": ctx.trace_id, "usage_known": usage is not None,
            "response_body": capture.body, "content_type": capture.content_type, "event": event,
            "context": ctx, "reason": failure,
        }
        telemetry.execute(name, measurements, metadata)
        if trace_end is not None:
            try:
                trace_end(ctx, measurements, metadata)
            except Exception:  # as a failing telemetry handler is detached: one log line, then no more tracing
                self.trace_end = None
                log.exception("tracing failed on request %s and is off in this worker from now on", ctx.request_id)

    def _event(self, scope: dict[str, Any], ctx: RequestContext, capture: _Capture, usage: dict[str, int] | None,
               cost: Cost | None, ended: float) -> Event:
        response_headers = sanitize_headers(capture.headers)
        content_type = response_headers.get("content-type", "")
        encoding = response_headers.get("content-encoding")
        request_body, request_cut = cap_body(ctx.request_body, self.max_request)
        upstream_ms = _ms(ctx.upstream_started, ctx.upstream_finished or ended)
        total_ms = (ended - ctx.started) * 1000.0
        status = capture.status
        if ctx.client_disconnected and not status:
            status = CLIENT_CLOSED_STATUS
        return Event(
            request_id=ctx.request_id,
            started_at=ctx.started_at,
            first_byte_at=_wall(ctx, ctx.upstream_first_byte),
            ended_at=ctx.started_at + timedelta(seconds=ended - ctx.started),
            duration_ms=total_ms,
            upstream_ms=upstream_ms,
            overhead_ms=total_ms - upstream_ms if upstream_ms is not None else None,
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            status=status,
            provider=ctx.provider,
            model=ctx.model,
            stream=ctx.stream or content_type.startswith("text/event-stream"),
            project_id=ctx.project_id,
            token_id=ctx.token_id,
            token_metadata=ctx.token_metadata,
            user_id=ctx.user_id,
            client_ip=ctx.client_ip if self.keep_client_ip else None,
            cache_status=ctx.cache_status,
            request_headers=sanitize_headers(scope["headers"]),
            response_headers=response_headers,
            request_body=request_body,
            request_body_truncated=request_cut,
            response_body=bytes(capture.body),
            response_body_truncated=capture.size > len(capture.body),
            content_encoding=encoding,
            error=ctx.error,
            error_code=ctx.error_code,
            client_disconnected=ctx.client_disconnected,
            upstream_error=ctx.upstream_error,
            input_tokens=usage["input_tokens"] if usage else None,
            output_tokens=usage["output_tokens"] if usage else None,
            total_tokens=usage["total_tokens"] if usage else None,
            cached_tokens=usage["cached_tokens"] if usage else None,
            reasoning_tokens=usage["reasoning_tokens"] if usage else None,
            cost_usd=cost.total if cost is not None else None,
            cost_known=cost is not None,
            trace_id=ctx.trace_id,
        )


def _measurements(ctx: RequestContext, capture: _Capture, usage: dict[str, int] | None, cost: Cost | None,
                  ended: float) -> dict[str, Any]:
    counts = usage or _NO_USAGE
    duration = ended - ctx.started
    upstream_duration = None
    if ctx.upstream_started is not None:
        upstream_duration = (ctx.upstream_finished or ended) - ctx.upstream_started
    return {
        "duration": duration, "upstream_duration": upstream_duration,
        "overhead": duration - upstream_duration if upstream_duration is not None else None,
        "time_to_first_byte": capture.first_chunk - ctx.started if capture.first_chunk is not None else None,
        "input_tokens": counts["input_tokens"], "output_tokens": counts["output_tokens"],
        "cached_tokens": counts["cached_tokens"], "reasoning_tokens": counts["reasoning_tokens"],
        "cost_usd": cost.total if cost is not None else None,
    }


def _with_timing(message: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    elapsed = (time.monotonic() - ctx.started) * 1000.0
    headers = list(message.get("headers", ()))
    if ctx.upstream_started is not None and ctx.upstream_first_byte is not None:
        upstream = ((ctx.upstream_finished or ctx.upstream_first_byte) - ctx.upstream_started) * 1000.0
        headers.append((b"x-llm-proxy-upstream-ms", b"%.2f" % upstream))
        elapsed -= upstream
    headers.append((b"x-llm-proxy-overhead-ms", b"%.2f" % elapsed))
    return {**message, "headers": headers}


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) * 1000.0


def _wall(ctx: RequestContext, moment: float | None) -> datetime | None:
    if moment is None:
        return None
    return ctx.started_at + timedelta(seconds=moment - ctx.started)
