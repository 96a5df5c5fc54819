"""What the tracing handlers record about one call, and its spans, encoded off the request path.

On the request path the handlers (tracing.py) only note ids, clock readings and the stop event's
values in these named tuples. The exporter's task later encodes each `CallRecord` as its OTLP
spans with their GenAI attributes (`CallEncoder`), in batches, straight to protobuf bytes: no span
objects or attribute dicts are built. Records hold plain values only, so the garbage collector
stops tracking them after one pass, however long they wait in the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import orjson

from llm_proxy.telemetry import otlp, semconv

INTERNAL, SERVER, CLIENT = 1, 2, 3
"""OTLP `Span.SpanKind` values."""

MAX_PARSED_BODY = 1024 * 1024
MAX_DEFERRED_BODY = 16 * 1024
"""Larger bodies are read on the request path, so queued records never hold much memory."""
_MAX_HEADS = 1024
_H = TypeVar("_H")
_UNIQUE = frozenset({"gen_ai.response.id", "gen_ai.input.messages", "gen_ai.output.messages"})
"""Attributes whose values do not repeat: encoded without the cache."""


class ChildRecord(NamedTuple):
    """An INTERNAL child of the server span (token check, cache lookup)."""

    name: str
    span_id: int
    start: int
    end: int
    error: str | None
    attributes: tuple[tuple[str, Any], ...]


class UpstreamRecord(NamedTuple):
    """The upstream call (CLIENT span), whose context went upstream as `traceparent`."""

    span_id: int
    start: int
    end: int
    provider: str
    model: str | None


class Outcome(NamedTuple):
    """The stop event's values that the server and client spans need."""

    status: int
    request_id: str
    project_id: str | None
    token_id: str | None
    cache_status: str | None
    error_code: str | None
    usage: tuple[int, int, int, int] | None
    """input, output, cached input and reasoning output tokens, when the answer reported usage."""
    cost_usd: float | None
    stream: bool
    first_chunk: float | None
    """Seconds from sending the upstream request to the first chunk relayed (streams)."""
    request_body: bytes
    response_body: bytes | bytearray
    body_attributes: Mapping[str, Any] | None
    """Attributes already read from bodies too large to keep (`MAX_DEFERRED_BODY`); then both bodies are empty."""


class CallRecord(NamedTuple):
    trace_id: int
    span_id: int
    parent_id: int
    remote_parent: bool
    trace_state: str
    method: str
    path: str
    start: int
    end: int
    children: tuple[ChildRecord, ...]
    upstream: UpstreamRecord | None
    outcome: Outcome


class CallEncoder:
    """Encodes a `CallRecord` as its OTLP spans: SERVER, the INTERNAL children, the upstream CLIENT span.

    The name, kind and start-time attributes of each span are encoded once per distinct
    (method, path) or (path, provider, model, stream) and reused; the rest goes through the
    attribute cache, except values that never repeat.
    """

    def __init__(self, upstream_url: str, names: semconv.GenAiNames, capture_content: bool) -> None:
        parts = urlsplit(upstream_url)
        self._server = {"server.address": parts.hostname or "",
                        "server.port": parts.port or (443 if parts.scheme == "https" else 80)}
        self.names = names
        self.capture_content = capture_content
        self.attribute = otlp.AttributeFields().field
        self._server_heads: dict[tuple[str, str], bytes] = {}
        self._child_heads: dict[str, bytes] = {}
        self._client_heads: dict[tuple[str, str, str, str | None, bool], bytes] = {}

    def __call__(self, record: CallRecord) -> bytes:
        trace_id = record.trace_id.to_bytes(16, "big")
        parts = [self._server_span(trace_id, record)]
        for child in record.children:
            parts.append(self._child_span(trace_id, record, child))
        if record.upstream is not None:
            parts.append(self._client_span(trace_id, record, record.upstream))
        return b"".join(parts)

    def _remember(self, heads: dict[_H, bytes], key: _H, head: bytes) -> bytes:
        if len(heads) >= _MAX_HEADS:  # the model name comes from the client
            heads.clear()
        heads[key] = head
        return head

    def _server_span(self, trace_id: bytes, record: CallRecord) -> bytes:
        method, path, outcome, attribute = record.method, record.path, record.outcome, self.attribute
        heads = self._server_heads
        head = heads.get((method, path)) or self._remember(heads, (method, path), otlp.span_head(
            f"{method} {path}", SERVER, {"http.request.method": method, "url.path": path}))
        status = outcome.status
        error = None
        if status >= 500 or (status >= 400 and outcome.error_code):
            error = outcome.error_code or str(status)
        return otlp.span([
            otlp.span_ids(trace_id, record.span_id, record.parent_id, record.trace_state), head,
            otlp.span_times(record.start, record.end), attribute("http.response.status_code", status),
            otlp.attribute("llm_proxy.request_id", outcome.request_id),
            attribute("llm_proxy.project_id", outcome.project_id), attribute("llm_proxy.token_id", outcome.token_id),
            attribute("llm_proxy.cache_status", outcome.cache_status),
            attribute("llm_proxy.cost_usd", outcome.cost_usd),
            b"" if error is None else attribute("error.type", error),
            otlp.span_tail(error is not None, record.remote_parent)])

    def _child_span(self, trace_id: bytes, record: CallRecord, child: ChildRecord) -> bytes:
        name = child.name
        parts = [otlp.span_ids(trace_id, child.span_id, record.span_id, record.trace_state),
                 self._child_heads.get(name) or self._remember(self._child_heads, name,
                                                               otlp.span_head(name, INTERNAL, {})),
                 otlp.span_times(child.start, child.end)]
        parts += [self.attribute(key, value) for key, value in child.attributes]
        if child.error is not None:
            parts.append(self.attribute("error.type", child.error))
        parts.append(otlp.span_tail(child.error is not None, False))
        return otlp.span(parts)

    def _client_span(self, trace_id: bytes, record: CallRecord, upstream: UpstreamRecord) -> bytes:
        outcome = record.outcome
        attribute, status = self.attribute, outcome.status
        key = (record.method, record.path, upstream.provider, upstream.model, outcome.stream)
        parts = [otlp.span_ids(trace_id, upstream.span_id, record.span_id, record.trace_state),
                 self._client_heads.get(key) or self._remember(self._client_heads, key, self._client_head(*key)),
                 otlp.span_times(upstream.start, upstream.end), attribute("http.response.status_code", status)]
        if outcome.usage is not None:
            input_tokens, output_tokens, cached_tokens, reasoning_tokens = outcome.usage
            parts += (attribute("gen_ai.usage.input_tokens", input_tokens),
                      attribute("gen_ai.usage.output_tokens", output_tokens),
                      attribute("gen_ai.usage.cache_read.input_tokens", cached_tokens),
                      attribute("gen_ai.usage.reasoning.output_tokens", reasoning_tokens))
        if outcome.first_chunk is not None:
            parts.append(otlp.attribute("gen_ai.response.time_to_first_chunk", max(outcome.first_chunk, 0.0)))
        found = outcome.body_attributes
        if found is None:
            found = body_attributes(outcome.request_body, outcome.response_body, self.names, self.capture_content)
        parts += [otlp.attribute(k, v) if k in _UNIQUE else attribute(k, v) for k, v in found.items()]
        if status >= 400:
            parts.append(attribute("error.type", str(status)))
        parts.append(otlp.span_tail(status >= 400, False))
        return otlp.span(parts)

    def _client_head(self, method: str, path: str, provider: str, model: str | None, stream: bool) -> bytes:
        operation = semconv.OPERATIONS.get(path)
        attributes: dict[str, Any] = {**self._server, "gen_ai.provider.name": semconv.provider_name(provider),
                                      "gen_ai.request.stream": stream, "gen_ai.operation.name": operation,
                                      "gen_ai.request.model": model or None}
        name = f"{operation} {model or ''}".strip() if operation else f"{method} {path}"
        return otlp.span_head(name, CLIENT, attributes)


def body_attributes(request_body: bytes, response_body: bytes | bytearray, names: semconv.GenAiNames,
                    capture: bool) -> dict[str, Any]:
    """Request parameters and response fields of the CLIENT span (`response_body` empty for streams)."""
    found: dict[str, Any] = {}
    request = _json(request_body)
    if isinstance(request, dict):
        parameters = semconv.REQUEST_PARAMETERS
        for key, value in request.items():
            attribute = parameters.get(key)
            if attribute is not None and value.__class__ in (int, float):
                found[attribute] = value
        if capture and isinstance(request.get("messages", request.get("input")), list | str):
            found["gen_ai.input.messages"] = orjson.dumps(request.get("messages", request.get("input"))).decode()
    response = _json(response_body)
    if isinstance(response, dict):
        _response_attributes(found, response, names, capture)
    return found


def _response_attributes(found: dict[str, Any], response: dict[str, Any], names: semconv.GenAiNames,
                         capture: bool) -> None:
    if isinstance(response.get("id"), str):
        found["gen_ai.response.id"] = response["id"]
    if isinstance(response.get("model"), str):
        found["gen_ai.response.model"] = response["model"]
    choices = response.get("choices")
    if isinstance(choices, list):
        reasons = [c["finish_reason"] for c in choices if isinstance(c, dict) and isinstance(c.get("finish_reason"),
                                                                                                str)]
        if reasons:
            found["gen_ai.response.finish_reasons"] = tuple(reasons)  # hashable, so its encoding is cached
        if capture:
            messages = [c.get("message") for c in choices if isinstance(c, dict) and c.get("message")]
            found["gen_ai.output.messages"] = orjson.dumps(messages).decode()
    usage = response.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("cache_creation_input_tokens"), int):
        found[names.cache_write_tokens] = usage["cache_creation_input_tokens"]


def _json(body: bytes | bytearray) -> Any:
    if not body or len(body) > MAX_PARSED_BODY or body[:1] not in (b"{", b"["):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
