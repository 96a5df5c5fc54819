"""The per-request record that the proxy endpoint fills and the instrumentation reads.

The endpoint stores one `RequestContext` in `scope["llm_proxy"]`; the instrumentation middleware
(outside the endpoint) creates it, so it exists even when the endpoint rejects the call early.
Times are `time.monotonic()` seconds except `started_at`, which is wall-clock UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class RequestContext:
    started_at: datetime
    started: float
    request_id: str = ""
    provider: str = ""
    model: str | None = None
    stream: bool = False
    project_id: str | None = None
    token_id: str | None = None
    token_metadata: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    client_ip: str | None = None
    request_body: bytes = b""
    """The whole request body as the endpoint read it (the middleware caps what it keeps)."""
    request_document: dict[str, Any] | None = None
    """The request body parsed as a JSON object, when it is one (parsed once, by the endpoint)."""
    response_document: dict[str, Any] | None = None
    """A non-streamed JSON answer parsed as an object, when the endpoint parsed it to price it."""
    auth_started: float | None = None
    auth_finished: float | None = None
    """Around the token check (the tracing's `llm_proxy.auth` span); a check that failed leaves `token_id` None."""
    upstream_started: float | None = None
    upstream_first_byte: float | None = None
    upstream_finished: float | None = None
    cache_status: str | None = None
    """hit, conditional-hit, miss, bypass, stored; None when the cache did not take part."""
    error: str | None = None
    error_code: str | None = None
    client_disconnected: bool = False
    upstream_error: bool = False
    usage: dict[str, Any] | None = None
    trace_id: str | None = None
    trace: tuple[bytes, bytes, str, bool, list[Any]] | None = None
    """With tracing on: the call's ids and trace context (see `telemetry.tracing.CallTrace`)."""
