"""OpenTelemetry tracing, attached as telemetry handlers; off unless an OTLP endpoint is set.

Per proxied call: a SERVER span `POST /v1/chat/completions` (parent: the client's
`traceparent`, when valid) with INTERNAL children `llm_proxy.auth` and `llm_proxy.cache.lookup`
and one CLIENT child `chat gpt-4o` for the upstream call, whose context is what the upstream
receives as `traceparent`. The CLIENT span ends when the upstream finished; its usage attributes
are known only once the whole answer passed, so it is ended (with its recorded end time) at the
request's stop.

Per-request state lives in a context variable set on `proxy.request.start`: every handler call
of one request runs in that request's task, so no lookup table or lock is needed. When tracing
is off nothing here is built or attached (`build_tracing` returns None).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace import sampling as samplers
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from llm_proxy import __version__
from llm_proxy.settings import TracingSettings
from llm_proxy.telemetry import semconv
from llm_proxy.telemetry.events import Telemetry

log = logging.getLogger("llm_proxy.tracing")

MAX_PARSED_BODY = 1024 * 1024
_CHILDREN = ("llm_proxy.auth", "llm_proxy.cache.lookup")


ContextToken = contextvars.Token[otel_context.Context]


@dataclass(slots=True)
class _Request:
    server: trace.Span
    token: ContextToken
    children: list[tuple[trace.Span, ContextToken]] = field(default_factory=list)
    client: trace.Span | None = None
    client_token: ContextToken | None = None
    client_end: int | None = None
    recording: bool = True
    """False when the sampler dropped the trace: then only the context is kept for propagation."""


class Tracing:
    """The tracer provider and the handlers that turn telemetry events into spans."""

    def __init__(self, provider: TracerProvider, *, upstream_url: str, names: semconv.GenAiNames,
                 capture_content: bool) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("llm_proxy", __version__)
        self.names = names
        self.capture_content = capture_content
        self.propagator = TraceContextTextMapPropagator()
        parts = urlsplit(upstream_url)
        self._server = {"server.address": parts.hostname or "",
                        "server.port": parts.port or (443 if parts.scheme == "https" else 80)}
        self._state: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("llm_proxy_trace",
                                                                                      default=None)
        self._handler_id = f"llm_proxy.tracing.{id(self):x}"

    def attach(self, telemetry: Telemetry) -> None:
        on = telemetry.attach
        on(f"{self._handler_id}.start", "llm_proxy.proxy.request.start", self._on_request_start)
        telemetry.attach_many(f"{self._handler_id}.stop", ("llm_proxy.proxy.request.stop",
                              "llm_proxy.proxy.request.exception"), self._on_request_stop)
        for prefix in _CHILDREN:
            telemetry.attach(f"{self._handler_id}.{prefix}.start", f"{prefix}.start", self._on_child_start)
            telemetry.attach_many(f"{self._handler_id}.{prefix}.end", (f"{prefix}.stop", f"{prefix}.exception"),
                                  self._on_child_end)
        on(f"{self._handler_id}.upstream.start", "llm_proxy.upstream.request.start", self._on_upstream_start)
        telemetry.attach_many(f"{self._handler_id}.upstream.end", ("llm_proxy.upstream.request.stop",
                              "llm_proxy.upstream.request.exception"), self._on_upstream_end)

    def detach(self, telemetry: Telemetry) -> None:
        for entry in telemetry.list_handlers():
            if entry.handler_id.startswith(self._handler_id):
                telemetry.detach(entry.handler_id)

    def propagation_headers(self) -> list[tuple[str, str]]:
        """`traceparent` (and `tracestate`) of the current span, for the upstream request."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier)
        return list(carrier.items())

    def shutdown(self) -> None:
        self.provider.shutdown()

    def _on_request_start(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in md["headers"]
                   if k in (b"traceparent", b"tracestate")}
        parent = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(f"{md['method']} {md['path']}", context=parent, kind=SpanKind.SERVER,
                                      attributes={"http.request.method": md["method"], "url.path": md["path"]})
        token = otel_context.attach(trace.set_span_in_context(span))
        self._state.set(_Request(span, token, recording=span.is_recording()))
        md["context"].trace_id = format(span.get_span_context().trace_id, "032x")

    def _on_child_start(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        state = self._state.get()
        if state is None or not state.recording:
            return
        span = self.tracer.start_span(name.removesuffix(".start"), kind=SpanKind.INTERNAL)
        state.children.append((span, otel_context.attach(trace.set_span_in_context(span))))

    def _on_child_end(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        state = self._state.get()
        if state is None or not state.children:
            return
        span, token = state.children.pop()
        otel_context.detach(token)
        for key in ("result", "status", "cache_status"):
            if isinstance(md.get(key), str | int | bool):
                span.set_attribute(f"llm_proxy.{key}", md[key])
        if name.endswith(".exception"):
            _record_error(span, md.get("code") or md.get("kind") or "error")
        span.end()

    def _on_upstream_start(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        state = self._state.get()
        if state is None or not state.recording:
            return
        ctx = md["context"]
        operation = semconv.OPERATIONS.get(md["path"])
        attributes: dict[str, Any] = {**self._server, "gen_ai.provider.name": semconv.provider_name(ctx.provider),
                                      "gen_ai.request.stream": ctx.stream}
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if ctx.model:
            attributes["gen_ai.request.model"] = ctx.model
        span_name = f"{operation} {ctx.model or ''}".strip() if operation else f"{md['method']} {md['path']}"
        state.client = self.tracer.start_span(span_name, kind=SpanKind.CLIENT, attributes=attributes)
        state.client_token = otel_context.attach(trace.set_span_in_context(state.client))

    def _on_upstream_end(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        state = self._state.get()
        if state is None or state.client is None or state.client_token is None:
            return
        otel_context.detach(state.client_token)
        state.client_token = None
        state.client_end = time.time_ns()
        if name.endswith(".exception") and md.get("code") is not None:
            _record_error(state.client, md["code"])

    def _on_request_stop(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        state = self._state.get()
        if state is None:
            return
        self._state.set(None)
        try:
            if state.client is not None:
                self._finish_client(state.client, m, md)
                state.client.end(end_time=state.client_end)
            if state.recording:
                self._finish_server(state.server, m, md)
        finally:
            while state.children:
                span, token = state.children.pop()
                otel_context.detach(token)
                span.end()
            otel_context.detach(state.token)
            state.server.end()

    def _finish_server(self, span: trace.Span, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        status = md["status"]
        attributes = {"http.response.status_code": status, "llm_proxy.request_id": md["request_id"],
                      "llm_proxy.project_id": md["project_id"], "llm_proxy.token_id": md["token_id"],
                      "llm_proxy.cache_status": md["cache_status"], "llm_proxy.cost_usd": m["cost_usd"]}
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if status >= 500 or (status >= 400 and md["error_code"]):
            _record_error(span, md["error_code"] or str(status))

    def _finish_client(self, span: trace.Span, m: Mapping[str, Any], md: Mapping[str, Any]) -> None:
        status = md["status"]
        ctx = md["context"]
        attributes: dict[str, Any] = {"http.response.status_code": status}
        if md["usage_known"]:
            attributes.update({"gen_ai.usage.input_tokens": m["input_tokens"],
                               "gen_ai.usage.output_tokens": m["output_tokens"],
                               "gen_ai.usage.cache_read.input_tokens": m["cached_tokens"],
                               "gen_ai.usage.reasoning.output_tokens": m["reasoning_tokens"]})
        if md["stream"] and m["time_to_first_byte"] is not None and ctx.upstream_started is not None:
            first_chunk = ctx.started + m["time_to_first_byte"] - ctx.upstream_started
            attributes["gen_ai.response.time_to_first_chunk"] = max(first_chunk, 0.0)
        response = None if md["stream"] else _json(md.get("response_body", b""))
        attributes.update(self._body_attributes(_json(ctx.request_body), response))
        span.set_attributes(attributes)
        if status >= 400:
            _record_error(span, str(status))

    def _body_attributes(self, request: Any, response: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if isinstance(request, dict):
            for key, attribute in semconv.REQUEST_PARAMETERS.items():
                value = request.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    found[attribute] = value
            if self.capture_content and isinstance(request.get("messages", request.get("input")), list | str):
                found["gen_ai.input.messages"] = orjson.dumps(request.get("messages", request.get("input"))).decode()
        if isinstance(response, dict):
            found.update(_response_attributes(response, self.names, self.capture_content))
        return found


def _response_attributes(response: dict[str, Any], names: semconv.GenAiNames, capture: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if isinstance(response.get("id"), str):
        found["gen_ai.response.id"] = response["id"]
    if isinstance(response.get("model"), str):
        found["gen_ai.response.model"] = response["model"]
    choices = response.get("choices")
    if isinstance(choices, list):
        reasons = [c["finish_reason"] for c in choices if isinstance(c, dict) and isinstance(c.get("finish_reason"),
                                                                                                str)]
        if reasons:
            found["gen_ai.response.finish_reasons"] = reasons
        if capture:
            messages = [c.get("message") for c in choices if isinstance(c, dict) and c.get("message")]
            found["gen_ai.output.messages"] = orjson.dumps(messages).decode()
    usage = response.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("cache_creation_input_tokens"), int):
        found[names.cache_write_tokens] = usage["cache_creation_input_tokens"]
    return found


def _record_error(span: trace.Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def _json(body: bytes) -> Any:
    if not body or len(body) > MAX_PARSED_BODY or body[:1] not in (b"{", b"["):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def build_tracing(settings: TracingSettings, upstream_url: str, exporter: SpanExporter | None = None) -> Tracing | None:
    """The tracing of one worker, or None when it is off (no OTLP endpoint, or disabled)."""
    if exporter is None and not settings.enabled:
        return None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=_traces_url(settings), timeout=settings.timeout,
                                    headers=_pairs(settings.traces_headers or settings.headers))
    resource = Resource.create({**_pairs(settings.resource_attributes), "service.name": settings.service_name,
                                "service.version": __version__})
    provider = TracerProvider(resource=resource, sampler=_sampler(settings))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, upstream_url=upstream_url, names=semconv.names_for(settings.semconv_opt_in),
                   capture_content=settings.capture_content)


def _traces_url(settings: TracingSettings) -> str:
    return settings.traces_endpoint or settings.endpoint.rstrip("/") + "/v1/traces"


def _pairs(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {unquote(k).strip(): unquote(v).strip() for k, v in pairs}


def _sampler(settings: TracingSettings) -> samplers.Sampler:
    ratio = settings.sampler_arg
    root: dict[str, samplers.Sampler] = {
        "always_on": samplers.ALWAYS_ON, "always_off": samplers.ALWAYS_OFF,
        "traceidratio": samplers.TraceIdRatioBased(ratio),
    }
    name = settings.sampler
    if name.startswith("parentbased_"):
        return samplers.ParentBased(root[name.removeprefix("parentbased_")])
    return root[name]
