"""What may be cached, for how long, and under which key: pure functions of the headers.

A subset of RFC 9111 for a shared cache partitioned by project:

- Requests: GET and HEAD take part (HEAD is answered from the GET entry, never stored). POST
  takes part only when the client opts in with `Cache-Control: public, max-age=N` (or
  `s-maxage=N`), N > 0, which also sets the client-forced lifetime. Request `no-store` bypasses
  the cache; `no-cache` or `max-age=0` forwards the request and stores the fresh answer; a
  request `max-age=N` refuses entries older than N seconds; `only-if-cached` never forwards.
- Responses: never stored with `no-store`, `private` or `Vary: *`. The lifetime is, in order:
  `s-maxage`; `max-age`, then `Expires`, when the response allows shared caching of an
  authorised request (`public` or `must-revalidate`: the proxy always sends the upstream a
  credential, RFC 9111 section 3.5); `HTTP_CACHE_DEFAULT_TTL` for a `public` response that
  states no lifetime; finally the client-forced lifetime, for 200/203 answers, even over a
  response `no-cache` (SSE streams carry it), never over an explicit upstream lifetime of 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode

from llm_proxy.cache import KeySelector

CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
"""Statuses stored on the upstream's own say-so (RFC 9110 heuristically cacheable ones)."""
FORCEABLE_STATUSES = frozenset({200, 203})
"""Statuses a client-forced lifetime may store: never an error."""
KEY_HEADERS = (b"accept", b"accept-encoding", b"openai-beta", b"openai-organization", b"openai-project")
"""Request headers that change the upstream's answer whether or not it says `Vary`."""
FORWARD_STATUSES = frozenset({"miss", "vary-miss", "request", "bypass"})


@dataclass(frozen=True, slots=True)
class CacheControl:
    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    public: bool = False
    must_revalidate: bool = False
    only_if_cached: bool = False
    max_age: int | None = None
    s_maxage: int | None = None


NO_DIRECTIVES = CacheControl()


def _seconds(value: str) -> int:
    """A delta-seconds value; an invalid one counts as 0 (already stale), RFC 9111 1.2.2."""
    text = value.strip().strip('"')
    return int(text) if text.isdigit() else 0


def parse_cache_control(raw: bytes | str | None) -> CacheControl:
    if not raw:
        return NO_DIRECTIVES
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    flags: dict[str, bool] = {}
    ages: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if name in ("max-age", "s-maxage"):
            ages[name] = _seconds(value) if sep else 0
        elif name:
            flags[name] = True
    return CacheControl(
        no_store=flags.get("no-store", False), no_cache=flags.get("no-cache", False),
        private=flags.get("private", False), public=flags.get("public", False),
        must_revalidate=flags.get("must-revalidate", False) or flags.get("proxy-revalidate", False),
        only_if_cached=flags.get("only-if-cached", False),
        max_age=ages.get("max-age"), s_maxage=ages.get("s-maxage"),
    )


# --- requests -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestRule:
    """How one request takes part in the cache."""

    method: str
    """The method of the key: HEAD is looked up as GET."""
    lookup: bool
    store: bool
    fwd: str
    """RFC 9211 `fwd` reason when the request goes upstream without a lookup (or after a miss)."""
    forced_ttl: float | None = None
    max_age: int | None = None
    only_if_cached: bool = False


GET_RULE = RequestRule("GET", lookup=True, store=True, fwd="miss")
HEAD_RULE = RequestRule("GET", lookup=True, store=False, fwd="miss")


def request_rule(method: str, cache_control: bytes | None) -> RequestRule | None:
    """None when the request does not take part in the cache at all."""
    if cache_control is None:
        return GET_RULE if method == "GET" else HEAD_RULE if method == "HEAD" else None
    if method not in ("GET", "HEAD", "POST"):
        return None
    return _rule_with_directives(method, cache_control)


@lru_cache(maxsize=1024)
def _rule_with_directives(method: str, cache_control: bytes) -> RequestRule | None:
    """Clients repeat the same few `Cache-Control` values, so their rules are computed once."""
    cc = parse_cache_control(cache_control)
    forced = (cc.s_maxage or cc.max_age or 0) if cc.public else 0
    if method == "POST" and forced <= 0:
        return None
    key_method = "GET" if method == "HEAD" else method
    storable = method != "HEAD"
    if cc.no_store:
        return RequestRule(key_method, lookup=False, store=False, fwd="bypass")
    if cc.no_cache or cc.max_age == 0:
        return RequestRule(key_method, lookup=False, store=storable, fwd="request",
                           forced_ttl=forced or None)
    return RequestRule(key_method, lookup=True, store=storable, fwd="miss", forced_ttl=forced or None,
                       max_age=cc.max_age, only_if_cached=cc.only_if_cached)


# --- responses ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """What the cache needs from an upstream response's headers, read in one pass."""

    cache_control: CacheControl
    vary: tuple[str, ...]
    sse: bool
    content_length: int | None
    age: int
    expires: float | None
    date: float | None


def _http_date(raw: bytes) -> float | None:
    try:
        return parsedate_to_datetime(raw.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def vary_names(values: Iterable[bytes]) -> tuple[str, ...]:
    names = {name.strip().lower() for value in values for name in value.decode("latin-1").split(",")}
    names.discard("")
    return tuple(sorted(names))


def response_facts(headers: Iterable[tuple[bytes, bytes]]) -> ResponseFacts:
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        found.setdefault(name.lower(), []).append(value)

    def first(name: bytes) -> bytes | None:
        values = found.get(name)
        return values[0] if values else None

    length = first(b"content-length")
    age = first(b"age")
    expires, date = first(b"expires"), first(b"date")
    return ResponseFacts(
        cache_control=parse_cache_control(b",".join(found.get(b"cache-control", []))),
        vary=vary_names(found.get(b"vary", [])),
        sse=(first(b"content-type") or b"").lower().startswith(b"text/event-stream"),
        content_length=int(length) if length is not None and length.strip().isdigit() else None,
        age=int(age) if age is not None and age.strip().isdigit() else 0,
        expires=(_http_date(expires) or 0.0) if expires is not None else None,
        date=_http_date(date) if date is not None else None,
    )


@dataclass(frozen=True, slots=True)
class StoreDecision:
    ttl: float
    """Seconds to keep the entry; 0 means do not store, and `reason` says why."""
    reason: str = ""
    forced: bool = False


def _stated_lifetime(facts: ResponseFacts, now: float) -> float | None:
    if facts.cache_control.max_age is not None:
        return float(facts.cache_control.max_age)
    if facts.expires is not None:
        return facts.expires - (facts.date or now)
    return None


def _upstream_ttl(facts: ResponseFacts, status: int, default_ttl: float, now: float) -> float | None:
    """The lifetime left that the upstream gives, or None when it gives none a shared cache may use."""
    cc = facts.cache_control
    if cc.no_cache:
        return None
    if cc.s_maxage is not None:
        return float(cc.s_maxage - facts.age)
    if not (cc.public or cc.must_revalidate):
        return None
    lifetime = _stated_lifetime(facts, now)
    if lifetime is None and cc.public and default_ttl > 0 and status in CACHEABLE_STATUSES:
        lifetime = default_ttl
    return None if lifetime is None else lifetime - facts.age


def store_decision(rule: RequestRule, status: int, facts: ResponseFacts, *, default_ttl: float,
                   streams: bool, now: float) -> StoreDecision:
    cc = facts.cache_control
    reason = ""
    if not rule.store:
        reason = "request"
    elif cc.no_store or cc.private:
        reason = "no-store" if cc.no_store else "private"
    elif "*" in facts.vary:
        reason = "vary-star"
    elif facts.sse and not streams:
        reason = "stream"
    if reason:
        return StoreDecision(0.0, reason)
    ttl = _upstream_ttl(facts, status, default_ttl, now)
    if ttl is not None:
        if status not in CACHEABLE_STATUSES:
            return StoreDecision(0.0, "status")
        return StoreDecision(ttl, "") if ttl > 0 else StoreDecision(0.0, "stale")
    if rule.forced_ttl is None:
        return StoreDecision(0.0, "no-ttl")
    if status not in FORCEABLE_STATUSES:
        return StoreDecision(0.0, "status")
    return StoreDecision(rule.forced_ttl, "", forced=True)


# --- keys ---------------------------------------------------------------------------------------

def _digest(data: bytes | str, length: int) -> str:
    raw = data.encode("latin-1", "replace") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:length]


_EMPTY_QUERY_DIGEST = hashlib.sha256(b"").hexdigest()[:12]


def normalize_query(query: str) -> str:
    """Parameters sorted by name (the order of one name's values is kept, it can matter)."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(sorted(pairs, key=lambda pair: pair[0]))


def _header_value(headers: Mapping[bytes, bytes], name: bytes) -> str:
    value = headers.get(name)
    return "\x00" if value is None else " ".join(value.decode("latin-1").split())


_ABSENT = "\x1e".join("\x00" for _ in KEY_HEADERS)
_NO_KEY_HEADERS = (_ABSENT, hashlib.sha256(_ABSENT.encode()).hexdigest()[:8])


@dataclass(frozen=True, slots=True)
class RequestKey:
    base: str
    seed: str
    """Everything the base key abbreviates, in full; hashed into the entry's fingerprint."""

    def fingerprint(self, vary_material: str = "") -> str:
        return hashlib.sha256((self.seed + "\x1f" + vary_material).encode("latin-1", "replace")).hexdigest()

    def variant(self, names: tuple[str, ...], headers: Mapping[bytes, bytes]) -> tuple[str, str]:
        """The key and fingerprint of the variant these request headers select."""
        material = "\x1e".join(f"{name}={_header_value(headers, name.encode('latin-1'))}" for name in names)
        return f"{self.base}~{_digest(material, 16)}", self.fingerprint(material)


def request_key(project_id: str, method: str, path: str, query: str, body: bytes,
                headers: Mapping[bytes, bytes]) -> RequestKey:
    normalized = normalize_query(query)
    body_digest = hashlib.sha256(body).hexdigest()
    if any(name in headers for name in KEY_HEADERS):
        header_part = "\x1e".join(_header_value(headers, name) for name in KEY_HEADERS)
        header_digest = _digest(header_part, 8)
    else:
        header_part, header_digest = _NO_KEY_HEADERS
    query_digest = _digest(normalized, 12) if normalized else _EMPTY_QUERY_DIGEST
    base = (f"{project_id}:{path}:{method}:{query_digest}.{body_digest[:16]}."
            f"{header_digest}")
    seed = "\x1f".join((project_id, method, path, normalized, body_digest, header_part))
    return RequestKey(base, seed)


def request_selector(method: str, path: str, query: str, body: bytes | None = None,
                     project_id: str | None = None) -> KeySelector:
    """Every stored variant of one request (of any headers; of any body when `body` is None)."""
    key_method = "GET" if method.upper() == "HEAD" else method.upper()
    prefix = f"{path}:{key_method}:{_digest(normalize_query(query), 12)}."
    if body is not None:
        prefix += hashlib.sha256(body).hexdigest()[:16] + "."
    return _scoped(prefix, project_id)


def path_selector(path_prefix: str, project_id: str | None = None) -> KeySelector:
    return _scoped(path_prefix, project_id)


def _scoped(prefix: str, project_id: str | None) -> KeySelector:
    if project_id is None:
        return KeySelector(prefix, any_project=True)
    return KeySelector(f"{project_id}:{prefix}")


# --- conditional requests -------------------------------------------------------------------------

def _entity_tags(raw: bytes) -> list[bytes]:
    return [tag.strip().removeprefix(b"W/") for tag in raw.split(b",") if tag.strip()]


def not_modified(request_headers: Mapping[bytes, bytes], stored: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the client's `If-None-Match` / `If-Modified-Since` match the stored validators.

    `If-None-Match` wins when present (weak comparison, RFC 9110 13.1.2); `If-Modified-Since` is
    compared with the stored `Last-Modified` only.
    """
    if_none_match = request_headers.get(b"if-none-match")
    if_modified_since = request_headers.get(b"if-modified-since")
    if if_none_match is None and if_modified_since is None:
        return False
    validators = {name.lower(): value for name, value in stored if name.lower() in (b"etag", b"last-modified")}
    if if_none_match is not None:
        etag = validators.get(b"etag")
        if etag is None:
            return False
        tags = _entity_tags(if_none_match)
        return b"*" in tags or etag.strip().removeprefix(b"W/") in tags
    assert if_modified_since is not None
    last_modified, since = validators.get(b"last-modified"), _http_date(if_modified_since)
    if last_modified is None or since is None:
        return False
    stamp = _http_date(last_modified)
    return stamp is not None and stamp <= since
