"""What the tracing handlers record about one call, and its spans, encoded off the request path.

On the request path the handlers (tracing.py) only note ids, clock readings and the stop event's
values in a `CallRecord`. The exporter's task later encodes each record as its OTLP spans with
their GenAI attributes (`CallEncoder`), in batches, straight to protobuf bytes: no span objects or
attribute dicts are built. Records wait in the queue for up to a second, so they are kept cheap
for the garbage collector: they are queued as plain tuples of plain values, which the collector
stops tracking after a pass or two (it never does so for named tuples, which are subclasses; left
tracked, a second's worth of records would be walked and aged by every collection).
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


ChildRecord = tuple[str, int, int, int, str | None, tuple[tuple[str, Any], ...]]
"""An INTERNAL child of the server span: name, span_id, start, end, error type, attributes."""
UpstreamRecord = tuple[int, int, int, str, str | None]
"""The upstream call (CLIENT span), whose context went upstream: span_id, start, end, provider, model."""
Usage = tuple[int, int, int, int]
"""Input, output, cached input and reasoning output tokens."""


class CallRecord(NamedTuple):
    """One call, as the handlers saw it; nested records are plain tuples (see module doc)."""

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
    status: int
    request_id: str
    project_id: str | None
    token_id: str | None
    cache_status: str | None
    error_code: str | None
    usage: Usage | None
    cost_usd: float | None
    stream: bool
    first_chunk: float | None
    """Seconds from sending the upstream request to the first chunk relayed (streams)."""
    request_body: bytes
    response_body: bytes | bytearray
    body_attributes: Mapping[str, Any] | None
    """Attributes already read on the request path: from the bodies the endpoint had parsed anyway, or from
    bodies too large to keep (`MAX_DEFERRED_BODY`). The bodies above are the ones still to be read."""


QueuedRecord = tuple[Any, ...]
"""A `CallRecord` as a plain tuple (`tuple(record)`), which is what waits in the export queue."""


class CallEncoder:
    """Encodes a `CallRecord` as its OTLP spans: SERVER, the INTERNAL children, the upstream CLIENT span.

    What repeats from call to call is encoded once and reused, as a block of fields: the name,
    kind and first attributes of each span (per method and path, or per provider, model and
    stream), the server span's status, project, token and cache status, the client span's status
    and its token counts. The rest goes through the attribute cache, except values that never
    repeat. (Protobuf fields may come in any order, which is what makes the blocks possible.)
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
        self._outcomes: dict[tuple[int, str | None, str | None, str | None, str | None, bool], bytes] = {}
        self._statuses: dict[int, bytes] = {}
        self._usages: dict[Usage, bytes] = {}

    def __call__(self, queued: QueuedRecord) -> bytes:
        record = CallRecord._make(queued)
        trace_id = record.trace_id.to_bytes(16, "big")
        parts = [self._server_span(trace_id, record)]
        for child in record.children:
            parts.append(self._child_span(trace_id, record, child))
        if record.upstream is not None:
            parts.append(self._client_span(trace_id, record, *record.upstream))
        return b"".join(parts)

    def _remember(self, heads: dict[_H, bytes], key: _H, head: bytes) -> bytes:
        if len(heads) >= _MAX_HEADS:  # the model name comes from the client
            heads.clear()
        heads[key] = head
        return head

    def _server_span(self, trace_id: bytes, record: CallRecord) -> bytes:
        method, path = record.method, record.path
        heads = self._server_heads
        head = heads.get((method, path)) or self._remember(heads, (method, path), otlp.span_head(
            f"{method} {path}", SERVER, {"http.request.method": method, "url.path": path}))
        key = (record.status, record.project_id, record.token_id, record.cache_status, record.error_code,
               record.remote_parent)
        return otlp.span([
            otlp.span_start(trace_id, record.span_id, record.parent_id, record.trace_state, record.start, record.end),
            head, self._outcomes.get(key) or self._remember(self._outcomes, key, self._server_outcome(*key)),
            otlp.attribute("llm_proxy.request_id", record.request_id),
            self.attribute("llm_proxy.cost_usd", record.cost_usd)])

    def _server_outcome(self, status: int, project_id: str | None, token_id: str | None, cache_status: str | None,
                        error_code: str | None, remote_parent: bool) -> bytes:
        """The server span's fields that repeat from call to call of one token: attributes, status, flags."""
        error = None
        if status >= 500 or (status >= 400 and error_code):
            error = error_code or str(status)
        attributes = {"http.response.status_code": status, "llm_proxy.project_id": project_id,
                      "llm_proxy.token_id": token_id, "llm_proxy.cache_status": cache_status, "error.type": error}
        return b"".join(self.attribute(k, v) for k, v in attributes.items()) + otlp.span_tail(error is not None,
                                                                                               remote_parent)

    def _child_span(self, trace_id: bytes, record: CallRecord, child: ChildRecord) -> bytes:
        name, span_id, start, end, error, attributes = child
        parts = [otlp.span_start(trace_id, span_id, record.span_id, record.trace_state, start, end),
                 self._child_heads.get(name) or self._remember(self._child_heads, name,
                                                               otlp.span_head(name, INTERNAL, {}))]
        parts += [self.attribute(key, value) for key, value in attributes]
        if error is not None:
            parts.append(self.attribute("error.type", error))
        parts.append(otlp.span_tail(error is not None, False))
        return otlp.span(parts)

    def _client_span(self, trace_id: bytes, record: CallRecord, span_id: int, start: int, end: int, provider: str,
                     model: str | None) -> bytes:
        status = record.status
        key = (record.method, record.path, provider, model, record.stream)
        parts = [otlp.span_start(trace_id, span_id, record.span_id, record.trace_state, start, end),
                 self._client_heads.get(key) or self._remember(self._client_heads, key, self._client_head(*key)),
                 self._statuses.get(status) or self._remember(self._statuses, status, self._client_status(status))]
        usage = record.usage
        if usage is not None:
            parts.append(self._usages.get(usage) or self._remember(self._usages, usage, self._usage(*usage)))
        if record.first_chunk is not None:
            parts.append(otlp.attribute("gen_ai.response.time_to_first_chunk", max(record.first_chunk, 0.0)))
        found = record.body_attributes
        if record.request_body or record.response_body:
            later = body_attributes(record.request_body, record.response_body, self.names, self.capture_content)
            found = {**found, **later} if found else later
        elif found is None:
            found = {}
        attribute = self.attribute
        parts += [otlp.attribute(k, v) if k in _UNIQUE else attribute(k, v) for k, v in found.items()]
        return otlp.span(parts)

    def _client_status(self, status: int) -> bytes:
        error = status >= 400
        return (self.attribute("http.response.status_code", status)
                + (self.attribute("error.type", str(status)) if error else b"") + otlp.span_tail(error, False))

    def _usage(self, input_tokens: int, output_tokens: int, cached_tokens: int, reasoning_tokens: int) -> bytes:
        attribute = self.attribute
        return (attribute("gen_ai.usage.input_tokens", input_tokens)
                + attribute("gen_ai.usage.output_tokens", output_tokens)
                + attribute("gen_ai.usage.cache_read.input_tokens", cached_tokens)
                + attribute("gen_ai.usage.reasoning.output_tokens", reasoning_tokens))

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
    return document_attributes(_json(request_body), _json(response_body), names, capture)


def document_attributes(request: Any, response: Any, names: semconv.GenAiNames, capture: bool) -> dict[str, Any]:
    """`body_attributes` from the bodies already parsed (None, or anything but an object, gives nothing)."""
    found: dict[str, Any] = {}
    if isinstance(request, dict):
        parameters = semconv.REQUEST_PARAMETERS
        for key, value in request.items():
            attribute = parameters.get(key)
            if attribute is not None and value.__class__ in (int, float):
                found[attribute] = value
        if capture and isinstance(request.get("messages", request.get("input")), list | str):
            found["gen_ai.input.messages"] = orjson.dumps(request.get("messages", request.get("input"))).decode()
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
