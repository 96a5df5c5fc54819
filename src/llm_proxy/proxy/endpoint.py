"""ProxyEndpoint: the /v1/* data plane as one pure ASGI callable.

validate (method, endpoint, params, origin) → authenticate (token, project, quota) → upstream
key → circuit breaker → forward, streaming the answer back chunk by chunk as it arrives.
Every outcome, success or error, is written into the request's `RequestContext` for the
instrumentation that wraps this endpoint.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from llm_proxy.audit.recorder import AuditRecorder
from llm_proxy.clock import uuid4_str
from llm_proxy.context import RequestContext
from llm_proxy.errors import ProxyError
from llm_proxy.proxy import headers as hdr
from llm_proxy.proxy.breaker import CircuitBreaker
from llm_proxy.proxy.caching import Lookup, ResponseCaching
from llm_proxy.proxy.priced import priceable, relay_priced
from llm_proxy.proxy.providers import Provider
from llm_proxy.proxy.upstream import Upstream, UpstreamTimeoutError, UpstreamUnreachableError
from llm_proxy.proxy.validation import RequestValidator
from llm_proxy.telemetry import Telemetry
from llm_proxy.telemetry.cost import PriceTable
from llm_proxy.tokens.authenticator import Authenticator, Grant
from llm_proxy.tokens.budget import TICKET_KEY, BudgetGuard

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Any
Send = Any

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_JSON_TYPES = (b"application/json", b"application/json;", b"application/json; charset=utf-8")
AUDITED_CODES = frozenset({
    "invalid_token", "token_not_found", "token_inactive", "token_expired", "rate_limit_exceeded",
    "project_inactive", "origin_not_allowed", "budget_exceeded",
})


@dataclass(frozen=True)
class ProxyOptions:
    max_request_size: int
    trust_proxy_headers: bool
    telemetry: Telemetry | None = None
    trace_headers: Callable[[RequestContext], list[tuple[str, str]]] | None = None
    """With tracing on: the current span's `traceparent`/`tracestate`, which replace the client's."""
    caching: ResponseCaching | None = None
    budget: BudgetGuard | None = None
    """Spend budgets (SPEND_TRACKING); the admitted call's ticket is settled by the instrumentation."""
    prices: PriceTable | None = None
    """Prices non-streamed JSON answers for `X-LLM-Proxy-Cost`; None: the header is never sent."""
    """The response cache; None when HTTP_CACHE_ENABLED is false (then no request does cache work)."""


class ProxyEndpoint:
    def __init__(self, *, provider: Provider, validator: RequestValidator, authenticator: Authenticator,
                 upstream: Upstream, breaker: CircuitBreaker, audit: AuditRecorder, options: ProxyOptions) -> None:
        self.provider = provider
        self.validator = validator
        self.authenticator = authenticator
        self.upstream = upstream
        self.breaker = breaker
        self.audit = audit
        self.options = options
        self._auth_header = provider.auth.header
        self._extra_headers = {"X-Proxy": "llm-proxy", **provider.extra_headers}
        self.telemetry = options.telemetry or Telemetry()
        self._trace_headers = options.trace_headers
        self.caching = options.caching
        self.budget = options.budget
        self.prices = options.prices

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: RequestContext | None = scope.get("llm_proxy")
        if ctx is None:
            ctx = RequestContext(started_at=datetime.now(UTC), started=time.monotonic())
            scope["llm_proxy"] = ctx
        headers = dict(scope["headers"])
        ctx.request_id = request_id = _request_id(headers.get(b"x-request-id"))
        ctx.provider = self.provider.name
        ctx.client_ip = self._client_ip(scope, headers)
        origin = headers.get(b"origin")
        method = scope["method"]
        try:
            if method == "OPTIONS":
                await _send_preflight(send, request_id, origin, headers.get(b"access-control-request-headers"))
                return
            caching = self.caching
            rule = caching.rule(method, headers) if caching is not None else None
            grant = await self._admit(scope, receive, headers, ctx, count=rule is None)
            lookup = None
            if caching is not None and rule is not None:
                with self.telemetry.span("llm_proxy.cache.lookup", {"context": ctx}):
                    lookup = await caching.consult(rule, scope, headers, grant, ctx, send)
                if lookup is None:
                    return
            if self.budget is not None:
                scope[TICKET_KEY] = await self.budget.admit(grant)
            key = await self.authenticator.upstream_key(grant.project_id)
            self.breaker.before_call()
            with self.telemetry.span("llm_proxy.upstream.request",
                                     {"context": ctx, "method": method, "path": scope["path"]}):
                await self._forward(scope, receive, send, ctx, headers, key, origin, lookup)
        except ProxyError as err:
            ctx.error, ctx.error_code = err.message, err.code
            if err.status == 429:
                self.telemetry.execute("llm_proxy.rate_limit.exceeded", {"count": 1}, {
                    "reason": err.code, "project_id": ctx.project_id, "token_id": ctx.token_id,
                    "request_id": request_id})
            if err.code in AUDITED_CODES:
                self._audit_denial(scope, ctx, err)
            await send_error(send, err, request_id, origin)

    async def _admit(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes],
                     ctx: RequestContext, *, count: bool = True) -> Grant:
        """Everything that decides whether the call may go upstream; `count` charges the token."""
        self.validator.check_route(scope["method"], scope["path"])
        body = await read_body(receive, headers, self.options.max_request_size)
        ctx.request_body = body
        if body and headers.get(b"content-type", b"").startswith(_JSON_TYPES):
            parsed = _parse_json(body)
            if isinstance(parsed, dict):
                ctx.request_document = parsed
                model = parsed.get("model")
                ctx.model = model if isinstance(model, str) else None
                ctx.stream = parsed.get("stream") is True
                self.validator.check_params(parsed)
        origin = headers.get(b"origin")
        self.validator.check_origin(origin.decode("latin-1") if origin is not None else None)
        authorization = headers.get(b"authorization")
        ctx.auth_started = time.monotonic()
        try:
            with self.telemetry.span("llm_proxy.auth", {"context": ctx}):
                grant = await self.authenticator.authenticate(
                    authorization.decode("latin-1") if authorization is not None else None, count=count
                )
        finally:
            ctx.auth_finished = time.monotonic()
        ctx.project_id = grant.project_id
        ctx.token_id = grant.token.id
        ctx.token_metadata = grant.metadata
        ctx.user_id = _user_id(grant, headers)
        return grant

    async def _forward(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                       headers: dict[bytes, bytes], key: str, origin: bytes | None, lookup: Lookup | None) -> None:
        path_qs = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        if scope.get("query_string") and "?" not in path_qs:
            path_qs += "?" + scope["query_string"].decode("latin-1")
        trace_headers = self._trace_headers
        out_headers = hdr.upstream_headers(scope["headers"], self._auth_header, self.provider.auth.value(key),
                                           ctx.request_id, self._extra_headers,
                                           hdr.DROP_UPSTREAM if trace_headers is None else hdr.DROP_UPSTREAM_TRACED)
        if trace_headers is not None:
            out_headers += trace_headers(ctx)
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, ctx))
        try:
            await self._relay(scope["method"], path_qs, out_headers, send, ctx, origin, lookup)
        except asyncio.CancelledError:
            if not ctx.client_disconnected:
                raise
            task.uncancel()
            self.breaker.release_probe()
        finally:
            watcher.cancel()

    async def _relay(self, method: str, path_qs: str, out_headers: list[tuple[str, str]], send: Send,
                     ctx: RequestContext, origin: bytes | None, lookup: Lookup | None) -> None:
        ctx.upstream_started = time.monotonic()
        try:
            response = await self.upstream.send(method, path_qs, out_headers, ctx.request_body)
        except UpstreamTimeoutError as exc:
            self.breaker.record(None)
            ctx.upstream_error = True
            raise ProxyError(504, f"Request timeout: {exc}", "timeout", type_="api_error") from exc
        except UpstreamUnreachableError as exc:
            self.breaker.record(None)
            ctx.upstream_error = True
            raise ProxyError(502, f"Proxy error: upstream unreachable ({exc})", "upstream_unreachable",
                             type_="api_error") from exc
        ctx.upstream_first_byte = time.monotonic()
        self.breaker.record(response.status)
        out = hdr.downstream_headers(response.headers)
        out.append((b"x-request-id", ctx.request_id.encode()))
        out.append((b"x-proxy", b"llm-proxy"))
        if origin is not None:
            out.extend(hdr.cors_headers(origin))
        try:
            if lookup is not None:
                await lookup.relay(response, out, send, ctx)
            elif self.prices is not None and priceable(out, ctx):
                await relay_priced(response, out, send, ctx, self.prices)
            else:
                await send({"type": "http.response.start", "status": response.status, "headers": out})
                async for chunk in response.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except UpstreamUnreachableError as exc:
            ctx.upstream_error = True
            ctx.error = str(exc)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            ctx.upstream_finished = time.monotonic()
            response.release()

    def _client_ip(self, scope: Scope, headers: dict[bytes, bytes]) -> str | None:
        if self.options.trust_proxy_headers:
            forwarded = headers.get(b"x-forwarded-for") or headers.get(b"x-real-ip")
            if forwarded:
                return forwarded.split(b",")[0].strip().decode("latin-1")
        client = scope.get("client")
        return client[0] if client else None

    def _audit_denial(self, scope: Scope, ctx: RequestContext, err: ProxyError) -> None:
        self.audit.record(
            "proxy_request", "system", "denied",
            project_id=ctx.project_id, request_id=ctx.request_id, client_ip=ctx.client_ip,
            method=scope["method"], path=scope["path"], reason=err.code, token_id=ctx.token_id,
            details={"status": err.status, "error": err.message},
        )


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], ctx: RequestContext) -> None:
    """Cancel the request's task when the client goes away, so the upstream call stops too."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if ctx.upstream_finished is None:
                ctx.client_disconnected = True
                task.cancel()
            return


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProxyError(400, "Client closed the connection while sending the body", "client_closed")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"Request body too large: the limit is {limit} bytes", "request_too_large")


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"Malformed JSON body: {exc}", "invalid_json") from exc


def _request_id(given: bytes | None) -> str:
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given.decode()
    return uuid4_str()


def _user_id(grant: Grant, headers: dict[bytes, bytes]) -> str | None:
    metadata = grant.metadata
    user = metadata.get("user_id")
    if isinstance(user, str) and user:
        return user
    header = headers.get(b"x-llm-proxy-user")
    if header and metadata.get("allow_user_header") is True:
        return header.decode("latin-1")[:256]
    return None


async def send_error(send: Send, err: ProxyError, request_id: str, origin: bytes | None) -> None:
    body = err.body()
    out = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    out.extend((k.lower().encode(), v.encode()) for k, v in err.headers.items())
    if origin is not None:
        out.extend(hdr.cors_headers(origin))
    await send({"type": "http.response.start", "status": err.status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_preflight(send: Send, request_id: str, origin: bytes | None,
                          requested: bytes | None) -> None:
    out = [(b"x-request-id", request_id.encode()), (b"content-length", b"0")]
    out.extend(hdr.preflight_headers(origin, requested))
    await send({"type": "http.response.start", "status": 204, "headers": out})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
