"""OpenTelemetry tracing, attached as telemetry handlers; off unless an OTLP endpoint is set.

Per proxied call: a SERVER span `POST /v1/chat/completions` (parent: the client's
`traceparent`, when valid) with INTERNAL children `llm_proxy.auth` and `llm_proxy.cache.lookup`
and one CLIENT child `chat gpt-4o` for the upstream call, whose context is what the upstream
receives as `traceparent`. The CLIENT span ends when the upstream finished; its usage attributes
are known only once the whole answer passed.

Tracing every call must stay cheap next to the proxy's own work (~0.25 ms of CPU per call), so
these handlers do not build spans: they note ids, clock readings and the stop event's values in a
`CallRecord` (call_spans.py) and queue it. An exporter encodes records as OTLP protobuf spans with
their attributes (call_spans.py, otlp.py) and posts them (exporter.py), by default in a child
process of the worker (export_process.py). The OpenTelemetry SDK, used before, cost ~350 µs per
call and halved a CPU-bound proxy's throughput.

Per-request state lives in a context variable set by `start`, which the instrumentation calls
directly (a telemetry event for it cost more): every handler call of one request runs in that
request's task, so no lookup table or lock is needed. When tracing is off nothing here is built
or attached (`build_tracing` returns None).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from llm_proxy import __version__
from llm_proxy.context import RequestContext
from llm_proxy.settings import LogSettings, TracingSettings
from llm_proxy.telemetry import semconv
from llm_proxy.telemetry.call_spans import (
    MAX_DEFERRED_BODY,
    CallEncoder,
    ChildRecord,
    QueuedRecord,
    body_attributes,
    document_attributes,
)
from llm_proxy.telemetry.events import Telemetry
from llm_proxy.telemetry.exporter import OtlpHttpExporter, SpanExporter
from llm_proxy.telemetry.otlp import ExportRequest
from llm_proxy.telemetry.trace_context import (
    Sampler,
    make_sampler,
    new_span_id,
    new_trace_id,
    parse_parent,
    traceparent,
)

_AUTH = "llm_proxy.auth"
_CHILDREN = ("llm_proxy.cache.lookup",)
_CHILD_NAMES = {f"{prefix}.{phase}": prefix for prefix in _CHILDREN for phase in ("stop", "exception")}
_CHILD_ATTRIBUTES = ("result", "status", "cache_status")


class _Call:
    """One call in flight."""

    __slots__ = ("children", "client_id", "client_start", "method", "monotonic_start", "parent_id", "path", "remote",
                 "sampled", "span_id", "start", "trace_hex", "trace_id", "trace_state")

    def __init__(self, trace_id: int, parent_id: int, trace_state: str, sampled: bool, method: str,
                 path: str) -> None:
        self.trace_id = trace_id
        self.trace_hex = f"{trace_id:032x}"
        self.span_id = new_span_id()
        self.parent_id = parent_id
        self.remote = parent_id != 0
        self.trace_state = trace_state
        self.sampled = sampled
        self.method = method
        self.path = path
        self.start = time.time_ns()
        self.monotonic_start = time.monotonic()
        self.children: list[ChildRecord] = []
        self.client_id = 0
        """The CLIENT span's id, from the moment the upstream request is built (0 = no upstream call)."""
        self.client_start = 0


class Tracing:
    """The handlers that turn telemetry events into call records, and the exporter they feed.

    `start` is called by the instrumentation as each call begins; then two telemetry events are
    handled: request stop, and the stop (or exception) of the cache lookup, whose start is the stop
    time less its duration. The token check's span
    comes from the times the endpoint notes on the `RequestContext` (`auth_started`,
    `auth_finished`): every call has one, and listening to its telemetry span cost more. The
    CLIENT span starts when the endpoint asks for the headers to propagate (`propagation_headers`,
    right before the upstream request) and ends when the upstream answer was relayed
    (`RequestContext.upstream_finished`).
    """

    def __init__(self, exporter: SpanExporter[QueuedRecord], sampler: Sampler, *, names: semconv.GenAiNames,
                 capture_content: bool, defer_bodies: bool = False) -> None:
        self.exporter = exporter
        self.defer_bodies = defer_bodies
        """Leave the span attributes in the bodies to the encoder (it runs in another process), rather
        than read them here from the documents the endpoint parsed."""
        self.sampler = sampler
        self.names = names
        self.capture_content = capture_content
        self._state: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("llm_proxy_trace", default=None)
        self._handler_id = f"llm_proxy.tracing.{id(self):x}"

    def attach(self, telemetry: Telemetry) -> None:
        telemetry.attach_many(f"{self._handler_id}.stop", ("llm_proxy.proxy.request.stop",
                              "llm_proxy.proxy.request.exception"), self._on_request_stop)
        for prefix in _CHILDREN:
            telemetry.attach_many(f"{self._handler_id}.{prefix}", (f"{prefix}.stop", f"{prefix}.exception"),
                                  self._on_child_end)

    def detach(self, telemetry: Telemetry) -> None:
        for entry in telemetry.list_handlers():
            if entry.handler_id.startswith(self._handler_id):
                telemetry.detach(entry.handler_id)

    def propagation_headers(self) -> list[tuple[str, str]]:
        """`traceparent` (and `tracestate`) for the upstream request: the CLIENT span's context, which starts now."""
        call = self._state.get()
        if call is None:
            return []
        if not call.sampled:
            span_id = call.span_id
        elif call.client_id:
            span_id = call.client_id
        else:
            span_id = call.client_id = new_span_id()
            call.client_start = time.time_ns()
        headers = [("traceparent", traceparent(call.trace_hex, span_id, call.sampled))]
        if call.trace_state:
            headers.append(("tracestate", call.trace_state))
        return headers

    async def flush(self) -> None:
        await self.exporter.flush()

    async def aclose(self) -> None:
        await self.exporter.aclose()

    def shutdown(self, timeout: float = 30.0) -> None:
        """`aclose` for a caller on another thread (the services stack runs it with `asyncio.to_thread`)."""
        loop = self.exporter.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self.exporter.aclose(), loop).result(timeout)

    def start(self, scope: Mapping[str, Any], ctx: RequestContext) -> None:
        """A call begins: called by the instrumentation for every call (not through a telemetry event)."""
        traceparent_header = tracestate = ""
        for key, value in scope["headers"]:
            if key == b"traceparent":
                traceparent_header = value.decode("latin-1")
            elif key == b"tracestate":
                tracestate = f"{tracestate},{value.decode('latin-1')}" if tracestate else value.decode("latin-1")
        parent = parse_parent(traceparent_header, tracestate) if traceparent_header else None
        if parent is None:
            trace_id = new_trace_id()
            call = _Call(trace_id, 0, "", self.sampler(None, trace_id), scope["method"], scope["path"])
        else:
            call = _Call(parent.trace_id, parent.span_id, parent.trace_state, self.sampler(parent, parent.trace_id),
                         scope["method"], scope["path"])
        self._state.set(call)
        ctx.trace_id = call.trace_hex

    def _on_child_end(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        call = self._state.get()
        if call is None or not call.sampled:
            return
        end = time.time_ns()
        attributes: tuple[tuple[str, Any], ...] = ()
        if "result" in md or "status" in md or "cache_status" in md:
            attributes = tuple((f"llm_proxy.{key}", md[key]) for key in _CHILD_ATTRIBUTES
                               if isinstance(md.get(key), str | int | bool))
        error = None
        if name.endswith(".exception"):
            error = md.get("code") or md.get("kind") or "error"
        call.children.append((_CHILD_NAMES[name], new_span_id(), end - int(m["duration"] * 1e9), end, error,
                              attributes))

    def _on_request_stop(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        call = self._state.get()
        if call is None:
            return
        self._state.set(None)
        if call.sampled:
            self.exporter.submit(self._record(call, m, md))

    def _record(self, call: _Call, m: Mapping[str, Any], md: Mapping[str, Any]) -> QueuedRecord:
        """The fields of a `CallRecord`, as a plain tuple (see call_spans)."""
        end = time.time_ns()
        ctx = md["context"]
        children = tuple(call.children)
        auth_started = ctx.auth_started
        if auth_started is not None:
            start = call.start + int((auth_started - call.monotonic_start) * 1e9)
            finished = ctx.auth_finished
            auth_end = end if finished is None else call.start + int((finished - call.monotonic_start) * 1e9)
            children = ((_AUTH, new_span_id(), start, max(auth_end, start),
                         None if ctx.token_id is not None else ctx.error_code or "error", ()), *children)
        upstream = None
        if call.client_id:
            finished = ctx.upstream_finished
            upstream_end = end
            if finished is not None:
                upstream_end = min(call.start + int((finished - call.monotonic_start) * 1e9), end)
            upstream = (call.client_id, call.client_start, max(upstream_end, call.client_start), ctx.provider,
                        ctx.model)
        stream = md["stream"]
        first_chunk = None
        if stream and m["time_to_first_byte"] is not None and ctx.upstream_started is not None:
            first_chunk = ctx.started + m["time_to_first_byte"] - ctx.upstream_started
        request: bytes = b""
        response: bytes | bytearray = b""
        found = None
        if upstream:
            request = ctx.request_body
            response = b"" if stream else md.get("response_body", b"")
            if not self.defer_bodies:
                request_document = ctx.request_document
                response_document = None if stream else ctx.response_document
                if request_document is not None:
                    request = b""
                if response_document is not None:
                    response = b""
                if request_document is not None or response_document is not None:
                    found = document_attributes(request_document, response_document, self.names,
                                                self.capture_content)
            if len(request) > MAX_DEFERRED_BODY or len(response) > MAX_DEFERRED_BODY:
                found = {**(found or {}), **body_attributes(request, response, self.names, self.capture_content)}
                request = response = b""
        usage = None
        if md["usage_known"]:
            usage = (m["input_tokens"], m["output_tokens"], m["cached_tokens"], m["reasoning_tokens"])
        return (call.trace_id, call.span_id, call.parent_id, call.remote, call.trace_state, call.method,
                call.path, call.start, end, children, upstream, md["status"], md["request_id"],
                md["project_id"], md["token_id"], md["cache_status"], md["error_code"], usage,
                m["cost_usd"], stream, first_chunk, request, response, found)


def build_tracing(settings: TracingSettings, upstream_url: str, exporter: SpanExporter[QueuedRecord] | None = None,
                  log_settings: LogSettings | None = None) -> Tracing | None:
    """The tracing of one worker, or None when it is off (no OTLP endpoint, or disabled).

    Spans are encoded and posted by a child process (export_process.py) unless
    `LLM_PROXY_TRACE_EXPORT_PROCESS=false`; `log_settings` are the child's.
    """
    if exporter is None and not settings.enabled:
        return None
    in_child = exporter is None and settings.export_process
    if in_child:
        from llm_proxy.telemetry.export_process import ProcessSpanExporter

        exporter = ProcessSpanExporter(settings, log_settings or LogSettings("info", "json", ""), upstream_url)
    elif exporter is None:
        exporter = build_otlp_exporter(settings, upstream_url)
    return Tracing(exporter, make_sampler(settings.sampler, settings.sampler_arg),
                   names=semconv.names_for(settings.semconv_opt_in), capture_content=settings.capture_content,
                   defer_bodies=in_child)


def build_otlp_exporter(settings: TracingSettings, upstream_url: str) -> OtlpHttpExporter[QueuedRecord]:
    """The exporter that encodes and posts spans, in the worker or in its exporter process."""
    resource = {"telemetry.sdk.language": "python", "telemetry.sdk.name": "llm-proxy",
                "telemetry.sdk.version": __version__, **_pairs(settings.resource_attributes),
                "service.name": settings.service_name, "service.version": __version__}
    headers = {"User-Agent": f"llm-proxy/{__version__}", **_pairs(settings.traces_headers or settings.headers)}
    encoder = CallEncoder(upstream_url, semconv.names_for(settings.semconv_opt_in), settings.capture_content)
    return OtlpHttpExporter(_traces_url(settings), headers, settings.timeout,
                            ExportRequest(resource, "llm_proxy", __version__), encoder)


def _traces_url(settings: TracingSettings) -> str:
    return settings.traces_endpoint or settings.endpoint.rstrip("/") + "/v1/traces"


def _pairs(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {unquote(k).strip(): unquote(v).strip() for k, v in pairs}
