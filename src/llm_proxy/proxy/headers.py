"""Which headers cross the proxy, in each direction, and what the proxy adds."""

from __future__ import annotations

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"trailers", b"transfer-encoding", b"upgrade",
})

CLIENT_IP_HEADERS = frozenset({
    b"x-forwarded-for", b"x-real-ip", b"cf-connecting-ip", b"cf-ipcountry", b"x-client-ip",
    b"x-original-forwarded-for", b"forwarded", b"true-client-ip", b"x-cluster-client-ip",
})

DROP_UPSTREAM = HOP_BY_HOP | CLIENT_IP_HEADERS | {
    b"host", b"content-length", b"authorization", b"x-request-id", b"cookie", b"x-llm-proxy-user",
    b"expect",  # the proxy sends head and body at once (uvicorn answered the client's 100-continue)
}

DROP_UPSTREAM_TRACED = DROP_UPSTREAM | {b"traceparent", b"tracestate"}
"""With tracing on, the proxy sends its own trace context upstream (the client's is the parent)."""

DROP_DOWNSTREAM = HOP_BY_HOP | {b"set-cookie", b"x-request-id"}

EXPOSE_HEADERS = (
    "X-Request-ID, X-Proxy, X-PROXY-CACHE, Cache-Status, X-LLM-Proxy-Overhead-Ms, "
    "X-LLM-Proxy-Upstream-Ms, X-LLM-Proxy-Cost"
)

PREFLIGHT_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
PREFLIGHT_DEFAULT_HEADERS = b"Authorization, Content-Type, X-Requested-With"


def upstream_headers(raw: list[tuple[bytes, bytes]], auth_header: str, auth_value: str,
                     request_id: str, extra: dict[str, str],
                     drop: frozenset[bytes] = DROP_UPSTREAM) -> list[tuple[str, str]]:
    """Client headers minus hop-by-hop, client-IP and credential headers (`drop`), plus ours."""
    out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k not in drop]
    out.append((auth_header, auth_value))
    out.append(("X-Request-ID", request_id))
    out.extend(extra.items())
    return out


def downstream_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in raw if k.lower() not in DROP_DOWNSTREAM]


def cors_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
        (b"vary", b"Origin"),
    ]


def preflight_headers(origin: bytes | None, requested: bytes | None) -> list[tuple[bytes, bytes]]:
    if origin is None:
        return []
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", PREFLIGHT_METHODS),
        (b"access-control-allow-headers", requested or PREFLIGHT_DEFAULT_HEADERS),
        (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
        (b"access-control-max-age", b"86400"),
        (b"vary", b"Origin"),
    ]
