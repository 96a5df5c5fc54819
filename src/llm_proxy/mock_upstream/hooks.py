"""Per-request test hooks, read from `X-Mock-*` request headers.

| header                        | effect                                                          |
|-------------------------------|-----------------------------------------------------------------|
| `X-Mock-Status: N`            | answer with status N (400–599) and an OpenAI error body         |
| `X-Mock-Latency-Ms: N`        | wait N ms before answering (replaces `--latency-ms`)            |
| `X-Mock-Chunk-Delay-Ms: N`    | wait N ms between stream frames (replaces `--chunk-delay-ms`)   |
| `X-Mock-Chunks: N`            | N content frames in a stream (replaces `--chunks`)              |
| `X-Mock-Drop-After-Chunks: N` | stream: close the connection after N SSE frames (any kind);     |
|                               | not a stream: close it without sending a response               |
| `X-Mock-Echo-Headers: 1`      | answer 200 with the received method, target, headers and body   |
| `X-Mock-Gzip: 1`              | gzip the body if the request also sends `Accept-Encoding: gzip` |
| `X-Mock-Cached-Tokens: N`     | report N cached prompt tokens (capped at the prompt tokens)     |
| `X-Mock-Reasoning-Tokens: N`  | report N reasoning tokens (added to the completion tokens)      |
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from llm_proxy.mock_upstream.textgen import Extras, RequestProblem

MAX_CHUNKS = 10_000
HOOK_HEADERS = frozenset({
    "x-mock-status", "x-mock-latency-ms", "x-mock-chunk-delay-ms", "x-mock-chunks",
    "x-mock-drop-after-chunks", "x-mock-echo-headers", "x-mock-gzip", "x-mock-cached-tokens",
    "x-mock-reasoning-tokens",
})


@dataclass(frozen=True, slots=True)
class MockOptions:
    """Server-wide defaults; the hooks above override them per request."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    chunks: int = 8
    api_key: str | None = None


@dataclass(frozen=True, slots=True)
class Hooks:
    status: int | None
    latency: float
    chunk_delay: float
    chunks: int
    drop_after: int | None
    gzip: bool
    echo: bool
    extras: Extras


def _number(headers: dict[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise RequestProblem(f"{name.title()} must be a non-negative number, got {raw!r}.")
    return value


def _integer(headers: dict[str, str], name: str, low: int, high: int) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    if not raw.strip().isdigit() or not low <= int(raw) <= high:
        raise RequestProblem(f"{name.title()} must be an integer in {low}..{high}, got {raw!r}.")
    return int(raw)


def read_hooks(headers: dict[str, str], options: MockOptions) -> Hooks:
    """The hooks of one request; a malformed value raises `RequestProblem` (answered 400)."""
    chunks = _integer(headers, "x-mock-chunks", 1, MAX_CHUNKS)
    extras = Extras(
        cached_tokens=_integer(headers, "x-mock-cached-tokens", 0, 10**9) or 0,
        reasoning_tokens=_integer(headers, "x-mock-reasoning-tokens", 0, 10**9) or 0,
    )
    return Hooks(
        status=_integer(headers, "x-mock-status", 400, 599),
        latency=_number(headers, "x-mock-latency-ms", options.latency_ms) / 1000,
        chunk_delay=_number(headers, "x-mock-chunk-delay-ms", options.chunk_delay_ms) / 1000,
        chunks=options.chunks if chunks is None else chunks,
        drop_after=_integer(headers, "x-mock-drop-after-chunks", 0, 10**9),
        gzip=headers.get("x-mock-gzip") == "1"
        and "gzip" in headers.get("accept-encoding", "").lower(),
        echo=headers.get("x-mock-echo-headers") == "1",
        extras=extras,
    )


@lru_cache(maxsize=16)
def default_hooks(options: MockOptions) -> Hooks:
    """The hooks of a request that sent no `X-Mock-*` header."""
    return read_hooks({}, options)
