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

from collections.abc import Callable, Mapping
from types import ModuleType
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


ChildRecord = tuple[str, bytes, int, int, str | None, tuple[tuple[str, Any], ...]]
"""An INTERNAL child of the server span from a telemetry event: name, span_id, start, end, error type, attributes."""
AuthRecord = tuple[int, int, str | None]
"""The token check (INTERNAL span `llm_proxy.auth`): start, end, error type."""
UpstreamRecord = tuple[int, int, str, str | None, float | None]
"""The upstream call (CLIENT span): start, end, provider, model, and for streams the seconds from
sending the request to the first chunk relayed."""
Usage = tuple[int, int, int, int]
"""Input, output, cached input and reasoning output tokens."""


class CallRecord(NamedTuple):
    """One call, as the handlers saw it; nested records are plain tuples (see module doc). Times are ns."""

    ids: bytes
    """The trace id (16 bytes), then the ids of the server, client and auth spans (8 bytes each)."""
    parent_id: bytes
    """The client's span, the server span's remote parent; b"" when the call started a trace."""
    trace_state: str
    method: str
    path: str
    start: int
    end: int
    auth: AuthRecord | None
    upstream: UpstreamRecord | None
    children: tuple[ChildRecord, ...]
    status: int
    request_id: str
    project_id: str | None
    token_id: str | None
    cache_status: str | None
    error_code: str | None
    usage: Usage | None
    cost_usd: float | None
    stream: bool
    request_body: bytes
    response_body: bytes | bytearray
    body_attributes: Mapping[str, Any] | None
    """Attributes already read on the request path: from the bodies the endpoint had parsed anyway, or from
    bodies too large to keep (`MAX_DEFERRED_BODY`). The bodies above are the ones still to be read."""


QueuedRecord = tuple[Any, ...]
"""A `CallRecord` as a plain tuple (`tuple(record)`), which is what waits in the export queue."""

_AUTH_NAME = "llm_proxy.auth"


class CallEncoder:
    """Encodes a `CallRecord` as its OTLP spans: SERVER, the INTERNAL children, the upstream CLIENT span.

    Each span is a few joined byte strings: its ids and times, and blocks encoded once and reused
    for every call that shares them — the server span's name, attributes, status and flags per
    method, path, status, project, token, cache status and error; the auth span's per outcome;
    the client span's per method, path, provider, model, stream and status; token counts per
    value. What varies per call (request id, cost, the attributes read from the bodies) is
    encoded each time, through the attribute cache where values repeat. (Protobuf fields may come
    in any order, which is what makes the blocks possible.)
    """

    def __init__(self, upstream_url: str, names: semconv.GenAiNames, capture_content: bool) -> None:
        self._server = server_attributes(upstream_url)
        self.names = names
        self.capture_content = capture_content
        self.attribute = otlp.AttributeFields().field
        self._server_heads: dict[tuple[Any, ...], bytes] = {}
        self._auth_heads: dict[str | None, bytes] = {}
        self._child_heads: dict[str, bytes] = {}
        self._client_heads: dict[tuple[Any, ...], bytes] = {}
        self._usages: dict[Usage, bytes] = {}
        self._trace_states: dict[str, bytes] = {"": b""}

    def __call__(self, queued: QueuedRecord) -> bytes:
        (ids, parent, trace_state, method, path, start, end, auth, upstream, children, status, request_id,
         project_id, token_id, cache_status, error_code, _, cost, _, _, _, _) = queued
        lead = otlp.span_lead(ids[:16])
        server_id = ids[16:24]
        state = self._trace_states.get(trace_state)
        if state is None:
            state = self._remember(self._trace_states, trace_state, otlp.trace_state_field(trace_state))
        key = (method, path, status, project_id, token_id, cache_status, error_code, bool(parent))
        head = self._server_heads.get(key) or self._remember(self._server_heads, key, self._server_head(*key))
        out = [otlp.span(lead, server_id, otlp.times(start, end), state,
                         otlp.PARENT_SPAN_ID + parent if parent else b"", head,
                         otlp.attribute("llm_proxy.request_id", request_id),
                         b"" if cost is None else otlp.attribute("llm_proxy.cost_usd", cost))]
        child_of = state + otlp.PARENT_SPAN_ID + server_id
        if auth is not None:
            auth_start, auth_end, error = auth
            head = self._auth_heads.get(error) or self._remember(self._auth_heads, error, self._auth_head(error))
            out.append(otlp.span(lead, ids[32:40], otlp.times(auth_start, auth_end), child_of, head))
        for child in children:
            out.append(self._child_span(lead, child_of, child))
        if upstream is not None:
            out.append(self._client_span(lead, child_of, queued))
        return b"".join(out)

    def _remember(self, heads: dict[_H, bytes], key: _H, head: bytes) -> bytes:
        if len(heads) >= _MAX_HEADS:  # the model name comes from the client
            heads.clear()
        heads[key] = head
        return head

    def _server_head(self, method: str, path: str, status: int, project_id: str | None, token_id: str | None,
                     cache_status: str | None, error_code: str | None, remote_parent: bool) -> bytes:
        """The server span's fields that repeat from call to call of one token: name, attributes, status, flags."""
        error = None
        if status >= 500 or (status >= 400 and error_code):
            error = error_code or str(status)
        attributes = {"http.response.status_code": status, "llm_proxy.project_id": project_id,
                      "llm_proxy.token_id": token_id, "llm_proxy.cache_status": cache_status, "error.type": error}
        return (otlp.span_head(f"{method} {path}", SERVER, {"http.request.method": method, "url.path": path})
                + b"".join(self.attribute(k, v) for k, v in attributes.items())
                + otlp.span_tail(error is not None, remote_parent))

    def _auth_head(self, error: str | None) -> bytes:
        return (otlp.span_head(_AUTH_NAME, INTERNAL, {}) + self.attribute("error.type", error)
                + otlp.span_tail(error is not None, False))

    def _child_span(self, lead: bytes, child_of: bytes, child: ChildRecord) -> bytes:
        name, span_id, start, end, error, attributes = child
        head = self._child_heads.get(name) or self._remember(self._child_heads, name,
                                                             otlp.span_head(name, INTERNAL, {}))
        parts = [self.attribute(key, value) for key, value in attributes]
        if error is not None:
            parts.append(self.attribute("error.type", error))
        return otlp.span(lead, span_id, otlp.times(start, end), child_of, head, *parts,
                         otlp.span_tail(error is not None, False))

    def _client_span(self, lead: bytes, child_of: bytes, queued: QueuedRecord) -> bytes:
        (ids, _, _, method, path, _, _, _, upstream, _, status, _, _, _, _, _, usage, _, stream, request_body,
         response_body, found) = queued
        start, end, provider, model, first_chunk = upstream
        key = (method, path, provider, model, stream, status)
        head = self._client_heads.get(key) or self._remember(self._client_heads, key, self._client_head(*key))
        usage_block = b""
        if usage is not None:
            usage_block = self._usages.get(usage) or self._remember(self._usages, usage, self._usage(*usage))
        if request_body or response_body:
            later = body_attributes(request_body, response_body, self.names, self.capture_content)
            found = {**found, **later} if found else later
        parts = [lead, ids[24:32], otlp.times(start, end), child_of, head, usage_block]
        if first_chunk is not None:
            parts.append(otlp.attribute("gen_ai.response.time_to_first_chunk", max(first_chunk, 0.0)))
        if found:
            attribute = self.attribute
            parts += [otlp.attribute(k, v) if k in _UNIQUE else attribute(k, v) for k, v in found.items()]
        return otlp.span(*parts)

    def _usage(self, input_tokens: int, output_tokens: int, cached_tokens: int, reasoning_tokens: int) -> bytes:
        attribute = self.attribute
        return (attribute("gen_ai.usage.input_tokens", input_tokens)
                + attribute("gen_ai.usage.output_tokens", output_tokens)
                + attribute("gen_ai.usage.cache_read.input_tokens", cached_tokens)
                + attribute("gen_ai.usage.reasoning.output_tokens", reasoning_tokens))

    def _client_head(self, method: str, path: str, provider: str, model: str | None, stream: bool,
                     status: int) -> bytes:
        operation = semconv.OPERATIONS.get(path)
        attributes: dict[str, Any] = {**self._server, "gen_ai.provider.name": semconv.provider_name(provider),
                                      "gen_ai.request.stream": stream, "gen_ai.operation.name": operation,
                                      "gen_ai.request.model": model or None}
        name = f"{operation} {model or ''}".strip() if operation else f"{method} {path}"
        error = status >= 400
        return (otlp.span_head(name, CLIENT, attributes) + self.attribute("http.response.status_code", status)
                + (self.attribute("error.type", str(status)) if error else b"") + otlp.span_tail(error, False))


def server_attributes(upstream_url: str) -> dict[str, Any]:
    parts = urlsplit(upstream_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname or "", "server.port": port}


def _native() -> ModuleType | None:
    try:
        from llm_proxy.telemetry import _spans
    except ImportError:  # built without a C compiler: the pure-Python paths are used
        return None
    return _spans


NATIVE = _native()
"""The C extension (`_spans.c`: the span encoder; `_records.c`: records packed for the exporter pipe), if built."""


def call_encoder(upstream_url: str, names: semconv.GenAiNames, capture_content: bool,
                 native: bool = True) -> Callable[[QueuedRecord], bytes]:
    """The encoder of call records: the C one (`_spans.c`, same bytes, several times faster) where it was
    built, `native` is on and message content is not captured; else `CallEncoder`."""
    if native and not capture_content and NATIVE is not None:
        server = server_attributes(upstream_url)
        encoder: Callable[[QueuedRecord], bytes] = NATIVE.Encoder(
            server["server.address"], server["server.port"], names.cache_write_tokens, semconv.OPERATIONS,
            semconv.PROVIDERS, semconv.REQUEST_PARAMETERS, orjson.loads, orjson.JSONDecodeError)
        return encoder
    return CallEncoder(upstream_url, names, capture_content)


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
