"""ResponseCaching: the proxy side of the response cache, between authentication and upstream.

`rule` says (from the method and `Cache-Control` alone) whether a request takes part at all.
`consult` runs after authentication: it answers a hit or a conditional hit (304) itself, with
the current request's `X-Request-ID` and CORS headers, `Age`, `X-PROXY-CACHE`,
`X-PROXY-CACHE-KEY` and an RFC 9211 `Cache-Status`. A hit needs an active, unexpired token of
an active project whose lifetime quota is not used up (a limited token is read again from the
database for that), but does not consume quota, as with the predecessor: it is counted in the
token's `cache_hit_count`, never in `request_count`. Anything else is a `Lookup` that the
endpoint forwards; the request is charged to the token then. `Lookup.relay` sends the upstream
answer and stores it when the rules of `cache/policy.py` allow:

- a non-streamed body is collected (up to `HTTP_CACHE_MAX_OBJECT_BYTES`) and stored before it
  is sent, so the headers can say `stored`; a larger one is relayed as it comes, uncached;
- an SSE stream is relayed chunk by chunk and stored only when it ended normally and fits the
  size bound (never a truncated entry); its headers cannot know that yet and say `miss`.

Backend trouble (`CacheUnavailableError`) turns the request into a bypass; it never fails it.

Headers: `X-PROXY-CACHE` is hit, conditional-hit, stored, miss or bypass. `Cache-Status` is
`llm-proxy; hit; ttl=<s>` (`; detail=conditional` for a 304), else `llm-proxy; fwd=<why>` with
`; stored` when stored or `; detail=<why not>`: fwd is miss, vary-miss, request (the client's
`no-cache`, `max-age`) or bypass (`no-store`, backend unavailable); details are no-store,
private, vary-star, stream, no-ttl, status, stale, too-large, incomplete, unavailable.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llm_proxy import errors
from llm_proxy.cache import (
    CacheCounters,
    CachedResponse,
    CacheObserver,
    CacheUnavailableError,
    ResponseCache,
    VaryIndex,
)
from llm_proxy.cache.policy import (
    RequestKey,
    RequestRule,
    ResponseFacts,
    StoreDecision,
    not_modified,
    request_key,
    request_rule,
    response_facts,
    store_decision,
)
from llm_proxy.context import RequestContext
from llm_proxy.errors import ProxyError
from llm_proxy.proxy import headers as hdr
from llm_proxy.proxy.upstream import UpstreamResponse, UpstreamUnreachableError
from llm_proxy.settings import CacheSettings
from llm_proxy.tokens.authenticator import Authenticator, Grant

Scope = dict[str, Any]
Send = Any
Headers = list[tuple[bytes, bytes]]

UNSTORED_HEADERS = hdr.DROP_DOWNSTREAM | {b"date", b"age", b"content-length", b"x-proxy-cache",
                                          b"x-proxy-cache-key"}
NOT_MODIFIED_HEADERS = frozenset({b"cache-control", b"content-location", b"etag", b"expires",
                                  b"last-modified", b"vary"})


@dataclass(slots=True)
class Lookup:
    """A request that takes part in the cache but goes upstream."""

    owner: ResponseCaching
    rule: RequestRule
    key: RequestKey
    headers: Mapping[bytes, bytes]
    project_id: str
    fwd: str
    slot: str = ""
    """The key the entry was looked up or is stored under (a variant key with `Vary`)."""
    index: VaryIndex | None = None
    detail: str = ""
    usable: bool = True
    """False once the backend failed: do not try to store."""

    async def relay(self, response: UpstreamResponse, out: Headers, send: Send, ctx: RequestContext) -> None:
        await self.owner.relay(self, response, out, send, ctx)


class ResponseCaching:
    def __init__(self, cache: ResponseCache, settings: CacheSettings, *, authenticator: Authenticator,
                 counters: CacheCounters | None = None, observer: CacheObserver | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.counters = counters or CacheCounters()
        self._auth = authenticator
        self._observe = observer
        self._now = now
        self._default_ttl = settings.default_ttl
        self._max_bytes = settings.max_object_bytes
        self._streams = settings.stream_responses
        self._backend = getattr(cache, "backend", type(cache).__name__)

    @staticmethod
    def rule(method: str, headers: Mapping[bytes, bytes]) -> RequestRule | None:
        return request_rule(method, headers.get(b"cache-control"))

    async def consult(self, rule: RequestRule, scope: Scope, headers: Mapping[bytes, bytes], grant: Grant,
                      ctx: RequestContext, send: Send) -> Lookup | None:
        """Answer from the cache (None), or charge the request and return what to store it as."""
        path = scope["raw_path"].decode("latin-1").partition("?")[0] if scope.get("raw_path") else scope["path"]
        key = request_key(grant.project_id, rule.method, path, scope.get("query_string", b"").decode("latin-1"),
                          ctx.request_body, headers)
        lookup = Lookup(self, rule, key, headers, grant.project_id, rule.fwd, slot=key.base,
                        detail="no-store" if rule.fwd == "bypass" else "")
        if rule.lookup:
            entry = await self._find(lookup)
            if entry is not None:
                await self._check_quota(grant, headers)
                await self._answer(entry, lookup, scope, ctx, send)
                self._auth.record_cache_hit(grant)
                return None
            if rule.only_if_cached:
                raise ProxyError(504, "Not in the cache, and the request said only-if-cached", "cache_miss",
                                 type_="api_error")
        self._count_forward(lookup)
        await self._auth.authenticate(_authorization(headers), count=True)
        return lookup

    async def _check_quota(self, grant: Grant, headers: Mapping[bytes, bytes]) -> None:
        """Refuse a hit to a token whose lifetime quota is used up.

        The validation cache does not see the charges made since it read the token, so a
        limited token is read again; unlimited tokens cost nothing here.
        """
        if grant.token.max_requests is None:
            return
        self._auth.forget_token(grant.token.id)
        token = (await self._auth.authenticate(_authorization(headers), count=False)).token
        if token.max_requests is not None and token.request_count >= token.max_requests:
            raise errors.quota_exceeded()

    async def _find(self, lookup: Lookup) -> CachedResponse | None:
        """The fresh entry for this request, setting `lookup.fwd` to why there is none."""
        try:
            entry = await self.cache.get(lookup.key.base)
            fingerprint = lookup.key.fingerprint()
            if isinstance(entry, VaryIndex):
                lookup.index = entry
                lookup.slot, fingerprint = lookup.key.variant(entry.names, lookup.headers)
                entry = await self.cache.get(lookup.slot)
                lookup.fwd = "miss" if entry is not None else "vary-miss"
        except CacheUnavailableError:
            lookup.fwd, lookup.detail, lookup.usable = "bypass", "unavailable", False
            return None
        if not isinstance(entry, CachedResponse) or entry.fingerprint != fingerprint:
            return None
        now = self._now()
        if entry.expires_at <= now:
            return None
        max_age = lookup.rule.max_age
        if max_age is not None and now - entry.stored_at > max_age:
            lookup.fwd = "request"
            return None
        return entry

    def _count_forward(self, lookup: Lookup) -> None:
        if lookup.fwd == "bypass":
            self.counters.bypasses += 1
            return
        self.counters.misses += 1
        if self._observe is not None:
            self._observe("llm_proxy.cache.miss", {}, {"backend": self._backend, "key": lookup.slot,
                                                       "project_id": lookup.project_id, "reason": lookup.fwd})

    async def _answer(self, entry: CachedResponse, lookup: Lookup, scope: Scope, ctx: RequestContext,
                      send: Send) -> None:
        now = self._now()
        conditional = not_modified(lookup.headers, entry.headers)
        status = 304 if conditional else entry.status
        out = [h for h in entry.headers if h[0] in NOT_MODIFIED_HEADERS] if conditional else list(entry.headers)
        age = max(0, int(now - entry.stored_at))
        out.append((b"age", str(age).encode()))
        _own_headers(out, ctx, lookup.headers.get(b"origin"))
        ttl = max(0, int(entry.expires_at - now))
        word = "conditional-hit" if conditional else "hit"
        status_value = f"llm-proxy; hit; ttl={ttl}" + ("; detail=conditional" if conditional else "")
        _cache_headers(out, status_value, word, lookup.slot)
        body = b"" if conditional or scope["method"] == "HEAD" else entry.body
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        ctx.cache_status = word
        self.counters.hits += 1
        self.counters.conditional_hits += conditional
        if self._observe is not None:
            self._observe("llm_proxy.cache.hit", {"bytes": float(len(entry.body)), "age": float(age)},
                          {"backend": self._backend, "key": lookup.slot, "project_id": lookup.project_id,
                           "conditional": conditional})

    # --- the miss path ----------------------------------------------------------------------

    async def relay(self, lookup: Lookup, response: UpstreamResponse, out: Headers, send: Send,
                    ctx: RequestContext) -> None:
        facts = response_facts(response.headers)
        decision = self._decide(lookup, response.status, facts)
        word = ctx.cache_status = "bypass" if lookup.fwd == "bypass" else "miss"
        if decision.ttl <= 0:
            _cache_headers(out, _forward_status(lookup, stored=False, detail=lookup.detail or decision.reason),
                           word, lookup.slot)
            await _pass_through(response, out, send, [])
        elif facts.sse:
            await self._relay_stream(lookup, response, facts, decision, out, send, ctx)
        else:
            await self._relay_body(lookup, response, facts, decision, out, send, ctx)

    def _decide(self, lookup: Lookup, status: int, facts: ResponseFacts) -> StoreDecision:
        if not lookup.usable:
            return StoreDecision(0.0, "unavailable")
        decision = store_decision(lookup.rule, status, facts, default_ttl=self._default_ttl,
                                  streams=self._streams, now=self._now())
        if decision.ttl > 0 and facts.content_length is not None and facts.content_length > self._max_bytes:
            return StoreDecision(0.0, "too-large")
        return decision

    async def _relay_body(self, lookup: Lookup, response: UpstreamResponse, facts: ResponseFacts,
                          decision: StoreDecision, out: Headers, send: Send, ctx: RequestContext) -> None:
        chunks: list[bytes] = []
        size = 0
        stream = response.chunks()
        try:
            async for chunk in stream:
                chunks.append(chunk)
                size += len(chunk)
                if size > self._max_bytes:
                    break
        except UpstreamUnreachableError:
            _cache_headers(out, _forward_status(lookup, stored=False, detail="incomplete"), "miss", lookup.slot)
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
            raise
        if size > self._max_bytes:
            _cache_headers(out, _forward_status(lookup, stored=False, detail="too-large"), "miss", lookup.slot)
            await _pass_through(response, out, send, chunks, stream)
            return
        body = b"".join(chunks)
        stored = await self._store(lookup, response.status, response.headers, body, facts, decision)
        word = "stored" if stored else "miss"
        ctx.cache_status = word
        _cache_headers(out, _forward_status(lookup, stored=stored, detail=lookup.detail), word, lookup.slot)
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay_stream(self, lookup: Lookup, response: UpstreamResponse, facts: ResponseFacts,
                            decision: StoreDecision, out: Headers, send: Send, ctx: RequestContext) -> None:
        _cache_headers(out, _forward_status(lookup, stored=False, detail=""), "miss", lookup.slot)
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        captured: list[bytes] | None = []
        size = 0
        async for chunk in response.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if captured is not None:
                size += len(chunk)
                if size <= self._max_bytes:
                    captured.append(chunk)
                else:
                    captured = None
        # Stored before the last (empty) message: once the client has it, the ASGI server reports
        # a disconnect and the endpoint would cancel this task.
        if captured is not None and await self._store(lookup, response.status, response.headers,
                                                      b"".join(captured), facts, decision):
            ctx.cache_status = "stored"
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _store(self, lookup: Lookup, status: int, upstream_headers: Headers, body: bytes,
                     facts: ResponseFacts, decision: StoreDecision) -> bool:
        now = self._now()
        ttl = decision.ttl
        kept = [(name.lower(), value) for name, value in upstream_headers if name.lower() not in UNSTORED_HEADERS]
        kept.append((b"content-length", str(len(body)).encode()))
        try:
            if facts.vary:
                lookup.slot, fingerprint = lookup.key.variant(facts.vary, lookup.headers)
                entry = CachedResponse(fingerprint, status, kept, body, now - facts.age, now + ttl)
                stored = await self.cache.set(lookup.slot, entry, ttl)
                if stored:
                    await self._index(lookup, facts.vary, now, ttl)
            else:
                entry = CachedResponse(lookup.key.fingerprint(), status, kept, body, now - facts.age, now + ttl)
                stored = await self.cache.set(lookup.slot, entry, ttl)
        except CacheUnavailableError:
            lookup.detail = "unavailable"
            return False
        if stored:
            self.counters.stores += 1
            if self._observe is not None:
                self._observe("llm_proxy.cache.put", {"bytes": float(len(body)), "ttl": ttl},
                              {"backend": self._backend, "key": lookup.slot, "project_id": lookup.project_id,
                               "forced": decision.forced})
        return stored

    async def _index(self, lookup: Lookup, names: tuple[str, ...], now: float, ttl: float) -> None:
        """Point the base key at the variants, for at least as long as this variant lives."""
        index = lookup.index
        if index is not None and index.names == names and index.expires_at >= now + ttl:
            return
        if index is not None and index.names == names:
            ttl = max(ttl, index.expires_at - now)
        await self.cache.set(lookup.key.base, VaryIndex(names, now + ttl), ttl)


def _authorization(headers: Mapping[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization")
    return value.decode("latin-1") if value is not None else None


def _own_headers(out: Headers, ctx: RequestContext, origin: bytes | None) -> None:
    out.append((b"x-request-id", ctx.request_id.encode()))
    out.append((b"x-proxy", b"llm-proxy"))
    if origin is not None:
        out.extend(hdr.cors_headers(origin))


def _forward_status(lookup: Lookup, *, stored: bool, detail: str) -> str:
    value = f"llm-proxy; fwd={lookup.fwd}"
    if stored:
        value += "; stored"
    if detail:
        value += f"; detail={detail}"
    return value


def _cache_headers(out: Headers, cache_status: str, word: str, key: str) -> None:
    out.append((b"cache-status", cache_status.encode()))
    out.append((b"x-proxy-cache", word.encode()))
    out.append((b"x-proxy-cache-key", key.encode("latin-1", "replace")))


async def _pass_through(response: UpstreamResponse, out: Headers, send: Send, first: list[bytes],
                        rest: AsyncIterator[bytes] | None = None) -> None:
    await send({"type": "http.response.start", "status": response.status, "headers": out})
    for chunk in first:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    async for chunk in rest if rest is not None else response.chunks():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
