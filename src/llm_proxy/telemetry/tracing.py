"""OpenTelemetry tracing; off unless an OTLP endpoint is set.

Per proxied call: a SERVER span `POST /v1/chat/completions` (parent: the client's
`traceparent`, when valid) with INTERNAL children `llm_proxy.auth` and `llm_proxy.cache.lookup`
and one CLIENT child `chat gpt-4o` for the upstream call, whose context is what the upstream
receives as `traceparent`. The CLIENT span ends when the upstream finished; its usage attributes
are known only once the whole answer passed.

Tracing every call must stay cheap next to the proxy's own work (~0.2 ms of CPU per call on a
small machine), so nothing here builds spans: the instrumentation calls `start` and `end`
directly; `start` draws the call's ids (trace, server, client and auth span, one draw of random
bytes) and keeps them on the `RequestContext`; `end` reads the clock readings the endpoint noted
there and queues a plain-tuple record (call_spans.py), or with the C extension the same record
already packed for the exporter process (`_records.c`). An exporter encodes records as OTLP
protobuf spans with their attributes (call_spans.py, otlp.py) and posts them (exporter.py), by
default in a child process of the worker (export_process.py). The OpenTelemetry SDK, used
before, cost ~350 µs per call and halved a CPU-bound proxy's throughput.

The one child span that comes from a telemetry event is the cache lookup's (its stop or
exception), which only calls with a cache rule have. When tracing is off nothing here is built
or attached (`build_tracing` returns None).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from llm_proxy import __version__
from llm_proxy.context import RequestContext
from llm_proxy.settings import LogSettings, TracingSettings
from llm_proxy.telemetry import semconv
from llm_proxy.telemetry.call_spans import (
    MAX_DEFERRED_BODY,
    NATIVE,
    ChildRecord,
    QueuedRecord,
    body_attributes,
    call_encoder,
    document_attributes,
)
from llm_proxy.telemetry.events import Telemetry
from llm_proxy.telemetry.exporter import OtlpHttpExporter, SpanExporter
from llm_proxy.telemetry.otlp import ExportRequest
from llm_proxy.telemetry.trace_context import (
    Sampler,
    make_sampler,
    new_ids,
    new_span_id,
    parse_parent,
    traceparent,
)

log = logging.getLogger("llm_proxy.tracing")

_CHILDREN = ("llm_proxy.cache.lookup",)
_CHILD_NAMES = {f"{prefix}.{phase}": prefix for prefix in _CHILDREN for phase in ("stop", "exception")}
_CHILD_ATTRIBUTES = ("result", "status", "cache_status")
_NO_CHILDREN: tuple[ChildRecord, ...] = ()

PackCall = Callable[[RequestContext, Any, dict[str, Any], dict[str, Any], int, float, int], bytes | None]
"""`_spans.pack_call`: `Tracing._record`'s record packed for the exporter pipe, or None for large bodies."""

CallTrace = tuple[bytes, bytes, str, bool, list[ChildRecord]]
"""What `start` keeps on `RequestContext.trace`: the ids (trace id, then the server, client and auth
span ids: 40 bytes), the remote parent span id (b"" for none), the `tracestate`, whether the call
is sampled, and the cache lookup's child span, if any."""


class Tracing:
    """Records each call for its spans, and the exporter the records go to.

    `start` is called by the instrumentation as each call begins and `end` once it ended. The
    token check's span comes from the times the endpoint notes on the `RequestContext`
    (`auth_started`, `auth_finished`); the CLIENT span's from `upstream_started` (right after the
    endpoint asked for the headers to propagate, `propagation_headers`) and `upstream_finished`.
    """

    def __init__(self, exporter: SpanExporter[Any], sampler: Sampler, *, names: semconv.GenAiNames,
                 capture_content: bool, defer_bodies: bool = False, pack_call: PackCall | None = None) -> None:
        self.exporter = exporter
        self.defer_bodies = defer_bodies
        """Leave the span attributes in the bodies to the encoder (it runs in another process), rather
        than read them here from the documents the endpoint parsed."""
        self.pack_call = pack_call if defer_bodies else None
        """`_spans.pack_call` when records are packed in C for the exporter pipe (`_records.c`): built straight
        from the call, as `_record` builds them with deferred bodies, rather than as tuples then marshalled."""
        self.sampler = sampler
        self.names = names
        self.capture_content = capture_content
        self._handler_id = f"llm_proxy.tracing.{id(self):x}"

    def attach(self, telemetry: Telemetry) -> None:
        for prefix in _CHILDREN:
            telemetry.attach_many(f"{self._handler_id}.{prefix}", (f"{prefix}.stop", f"{prefix}.exception"),
                                  self._on_child_end)

    def detach(self, telemetry: Telemetry) -> None:
        for entry in telemetry.list_handlers():
            if entry.handler_id.startswith(self._handler_id):
                telemetry.detach(entry.handler_id)

    def stats(self) -> tuple[int, int]:
        """Calls queued for export in this worker, and calls dropped here since it started (for the metrics)."""
        return self.exporter.queued(), self.exporter.dropped

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
        """A call begins: its trace context, from the client's headers or new."""
        traceparent_header = tracestate = ""
        for key, value in scope["headers"]:
            if key == b"traceparent":
                traceparent_header = value.decode("latin-1")
            elif key == b"tracestate":
                tracestate = f"{tracestate},{value.decode('latin-1')}" if tracestate else value.decode("latin-1")
        parent = parse_parent(traceparent_header, tracestate) if traceparent_header else None
        if parent is None:
            ids = new_ids(40)
            trace_id = ids[:16]
            ctx.trace = (ids, b"", "", self.sampler(None, trace_id), [])
            ctx.trace_id = trace_id.hex()
        else:
            ids = parent.trace_id + new_ids(24)
            ctx.trace = (ids, parent.span_id, parent.trace_state, self.sampler(parent, parent.trace_id), [])
            ctx.trace_id = parent.trace_id.hex()

    @staticmethod
    def propagation_headers(ctx: RequestContext) -> list[tuple[str, str]]:
        """`traceparent` (and `tracestate`) for the upstream request: the CLIENT span's context.

        An unsampled call records no span, so the upstream's parent is the server span's id (what
        the SDK does: a non-recording span still has an id).
        """
        trace = ctx.trace
        if trace is None:
            return []
        ids, _, trace_state, sampled, _ = trace
        headers = [("traceparent", traceparent(ctx.trace_id or "", ids[24:32] if sampled else ids[16:24], sampled))]
        if trace_state:
            headers.append(("tracestate", trace_state))
        return headers

    def _on_child_end(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        trace = md["context"].trace
        if trace is None or not trace[3]:
            return
        end = time.time_ns()
        attributes: tuple[tuple[str, Any], ...] = ()
        if "result" in md or "status" in md or "cache_status" in md:
            attributes = tuple((f"llm_proxy.{key}", md[key]) for key in _CHILD_ATTRIBUTES
                               if isinstance(md.get(key), str | int | bool))
        error = None
        if name.endswith(".exception"):
            error = md.get("code") or md.get("kind") or "error"
        trace[4].append((_CHILD_NAMES[name], new_span_id(), end - int(m["duration"] * 1e9), end, error,
                         attributes))

    def end(self, ctx: RequestContext, m: dict[str, Any], md: dict[str, Any]) -> None:
        """A call ended (`m` and `md`: the measurements and metadata of its stop or exception event)."""
        trace = ctx.trace
        if trace is not None and trace[3]:
            end, now = time.time_ns(), time.monotonic()
            pack_call = self.pack_call
            if pack_call is None:
                self.exporter.submit(self._record(ctx, trace, m, md, end, now))
                return
            packed = pack_call(ctx, trace, m, md, end, now, MAX_DEFERRED_BODY)
            # None: a body too large to leave to the exporter, read now by `_record` (packed at hand-over)
            self.exporter.submit(packed if packed is not None else self._record(ctx, trace, m, md, end, now))

    def _record(self, ctx: RequestContext, trace: CallTrace, m: Mapping[str, Any], md: Mapping[str, Any],
                end: int, now: float) -> QueuedRecord:
        """The fields of a `CallRecord`, as a plain tuple (see call_spans); times in ns since the epoch, from
        `end` (`time.time_ns()`) and `now` (`time.monotonic()`), read together as the call ended."""
        started = end - int((now - ctx.started) * 1e9)
        auth = None
        auth_started = ctx.auth_started
        if auth_started is not None:
            finished = ctx.auth_finished
            auth_start = end - int((now - auth_started) * 1e9)
            auth_end = end if finished is None else end - int((now - finished) * 1e9)
            error = None if ctx.token_id is not None else ctx.error_code or "error"
            auth = (auth_start, auth_end if auth_end > auth_start else auth_start, error)
        upstream = None
        stream = md["stream"]
        request: bytes = b""
        response: bytes | bytearray = b""
        found = None
        upstream_started = ctx.upstream_started
        if upstream_started is not None:
            client_start = end - int((now - upstream_started) * 1e9)
            finished = ctx.upstream_finished
            client_end = end if finished is None else end - int((now - finished) * 1e9)
            first_chunk = None
            ttfb = m["time_to_first_byte"]
            if stream and ttfb is not None:
                first_chunk = ctx.started + ttfb - upstream_started
            upstream = (client_start, client_end if client_end > client_start else client_start, ctx.provider,
                        ctx.model, first_chunk)
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
        children = trace[4]
        return (trace[0], trace[1], trace[2], md["method"], md["path"], started, end, auth, upstream,
                tuple(children) if children else _NO_CHILDREN, md["status"], md["request_id"], md["project_id"],
                md["token_id"], md["cache_status"], md["error_code"], usage, m["cost_usd"], stream, request,
                response, found)


def build_tracing(settings: TracingSettings, upstream_url: str, exporter: SpanExporter[QueuedRecord] | None = None,
                  log_settings: LogSettings | None = None) -> Tracing | None:
    """The tracing of one worker, or None when it is off (no OTLP endpoint, or disabled).

    Spans are encoded and posted by a child process (export_process.py) unless
    `LLM_PROXY_TRACE_EXPORT_PROCESS=false`; `log_settings` are the child's.
    """
    if exporter is None and not settings.enabled:
        return None
    if settings.native_encoder and NATIVE is None:
        log.warning("tracing: the C extension (llm_proxy.telemetry._spans) is not built, so spans are recorded "
                    "and encoded in Python, at more CPU per call; reinstall with a C compiler and the Python "
                    "headers (or set LLM_PROXY_TRACE_NATIVE_ENCODER=false to silence this)")
    in_child = exporter is None and settings.export_process
    packed = in_child and settings.native_encoder and NATIVE is not None
    if in_child:
        from llm_proxy.telemetry.export_process import ProcessSpanExporter

        exporter = ProcessSpanExporter(settings, log_settings or LogSettings("info", "json", ""), upstream_url,
                                       packed=packed)
    elif exporter is None:
        exporter = build_otlp_exporter(settings, upstream_url)
    return Tracing(exporter, make_sampler(settings.sampler, settings.sampler_arg),
                   names=semconv.names_for(settings.semconv_opt_in), capture_content=settings.capture_content,
                   defer_bodies=in_child, pack_call=NATIVE.pack_call if packed and NATIVE is not None else None)


def build_otlp_exporter(settings: TracingSettings, upstream_url: str) -> OtlpHttpExporter[QueuedRecord]:
    """The exporter that encodes and posts spans, in the worker or in its exporter process."""
    resource = {"telemetry.sdk.language": "python", "telemetry.sdk.name": "llm-proxy",
                "telemetry.sdk.version": __version__, **_pairs(settings.resource_attributes),
                "service.name": settings.service_name, "service.version": __version__}
    headers = {"User-Agent": f"llm-proxy/{__version__}", **_pairs(settings.traces_headers or settings.headers)}
    encoder = call_encoder(upstream_url, semconv.names_for(settings.semconv_opt_in), settings.capture_content,
                           settings.native_encoder)
    return OtlpHttpExporter(_traces_url(settings), headers, settings.timeout,
                            ExportRequest(resource, "llm_proxy", __version__), encoder)


def _traces_url(settings: TracingSettings) -> str:
    return settings.traces_endpoint or settings.endpoint.rstrip("/") + "/v1/traces"


def _pairs(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {unquote(k).strip(): unquote(v).strip() for k, v in pairs}
