"""InstrumentationMiddleware: turns every /v1/* call into one `Event` on the bus.

It wraps `send`: the status and headers are noted at `http.response.start`, and each body chunk
is passed on first and then copied into a capped buffer, so the client sees every byte as soon
as the endpoint produces it. The request body comes from the `RequestContext` the endpoint
filled (it reads the body anyway), so nothing is read twice. The event is built and published
after the last byte went out (or the client left); `bus.publish` never blocks or raises.
Cache hits publish nothing (the cache reports them through its own counters).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from llm_proxy.bus import EventBus
from llm_proxy.context import RequestContext
from llm_proxy.events import Event, cap_body, sanitize_headers
from llm_proxy.middleware.usage import usage_from_response
from llm_proxy.settings import ObservabilitySettings

log = logging.getLogger("llm_proxy.instrumentation")

CLIENT_CLOSED_STATUS = 499
NO_EVENT_CACHE_STATUSES = frozenset({"hit", "conditional-hit"})


class _Capture:
    __slots__ = ("body", "headers", "limit", "size", "status")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.size = 0


class InstrumentationMiddleware:
    def __init__(self, app: Any, *, bus: EventBus, settings: ObservabilitySettings) -> None:
        self.app = app
        self.bus = bus
        self.max_request = settings.max_request_body_bytes
        self.max_response = settings.max_response_body_bytes
        self.keep_client_ip = settings.client_ip

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        ctx = RequestContext(started_at=datetime.now(UTC), started=time.monotonic())
        scope["llm_proxy"] = ctx
        capture = _Capture(self.max_response)

        async def send_and_capture(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                capture.size += len(chunk)
                room = capture.limit - len(capture.body)
                if room > 0 and chunk:
                    capture.body += chunk[:room]
            elif message["type"] == "http.response.start":
                capture.status = message["status"]
                capture.headers = message.get("headers", [])

        try:
            await self.app(scope, receive, send_and_capture)
        finally:
            if ctx.cache_status not in NO_EVENT_CACHE_STATUSES:
                self._publish(scope, ctx, capture)

    def _publish(self, scope: dict[str, Any], ctx: RequestContext, capture: _Capture) -> None:
        try:
            self.bus.publish(self._event(scope, ctx, capture))
        except Exception:  # the request is done; an event bug must never surface to the client
            log.exception("could not build the event of request %s", ctx.request_id)

    def _event(self, scope: dict[str, Any], ctx: RequestContext, capture: _Capture) -> Event:
        ended = time.monotonic()
        response_headers = sanitize_headers(capture.headers)
        content_type = response_headers.get("content-type", "")
        encoding = response_headers.get("content-encoding")
        request_body, request_cut = cap_body(ctx.request_body, self.max_request)
        usage = ctx.usage or usage_from_response(bytes(capture.body), content_type, encoding is not None)
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
            trace_id=ctx.trace_id,
        )


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) * 1000.0


def _wall(ctx: RequestContext, moment: float | None) -> datetime | None:
    if moment is None:
        return None
    return ctx.started_at + timedelta(seconds=moment - ctx.started)
