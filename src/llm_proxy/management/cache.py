"""Response-cache endpoints: `POST /manage/cache/purge` and `GET /manage/cache/stats`.

Registered by `add_cache_routes(app, caching)` with the same management-token check as every
other route. A purge selects entries by exactly one of: one request (`method` + `url`, optionally
its `body`), a path prefix, a project, a raw key prefix (the predecessor's `prefix`), or `all`;
`project_id` narrows the request and path-prefix forms to one project. Every variant of the
selection (any headers, any `Vary` values) is deleted. Counters in the stats are those of the
worker process that answers; entries are shared by all workers with the Redis backend.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Protocol
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from llm_proxy.cache import CacheCounters, CacheUnavailableError, KeySelector, ResponseCache
from llm_proxy.cache.policy import path_selector, request_selector
from llm_proxy.errors import ManagementError
from llm_proxy.management.actions import Trail
from llm_proxy.management.auth import require_management_token
from llm_proxy.management.deps import Deps
from llm_proxy.management.params import read_body
from llm_proxy.management.responses import json_model
from llm_proxy.management.routes import REQUEST_ID_HEADER
from llm_proxy.management.schemas import NO_CONTROL_PATTERN, UUID_PATTERN, Error, RequestModel

DISABLED = "caching is disabled"
URL_PATTERN = r"^(/|https?://[^/?#\x00-\x20]+/)[^\x00-\x1f\x7f]*$"
NOTHING_SELECTED = "say what to purge: method and url, path_prefix, project_id, prefix or all"
UNAVAILABLE = "the cache backend is unavailable"


class CacheRuntime(Protocol):
    """What the proxy's response caching exposes to the control plane."""

    @property
    def cache(self) -> ResponseCache: ...

    @property
    def counters(self) -> CacheCounters: ...


Text = Annotated[str | None, Field(min_length=1, max_length=8192, pattern=NO_CONTROL_PATTERN)]


class PurgeRequest(RequestModel):
    method: Annotated[str | None, Field(pattern=r"^[A-Za-z]{1,16}$",
                                        description="With url: the method of the request to purge.")] = None
    url: Annotated[str | None, Field(min_length=1, max_length=8192, pattern=URL_PATTERN, description=(
        "With method: the request's path and query (`/v1/models?x=1`), or its absolute http(s) URL."
    ))] = None
    body: Annotated[str | None, Field(max_length=1024 * 1024, description=(
        "With method and url: only the entry of this exact request body (default: entries of any body)."
    ))] = None
    path_prefix: Annotated[Text, Field(description="Every entry whose request path starts with this.")] = None
    project_id: Annotated[str | None, Field(pattern=UUID_PATTERN, description=(
        "Alone: every entry of this project. With url or path_prefix: only this project's entries."
    ))] = None
    prefix: Annotated[Text, Field(description=(
        "A raw key prefix (`<project id>:<path>:<METHOD>:...`), as shown in X-PROXY-CACHE-KEY."
    ))] = None
    all: Annotated[bool | None, Field(description="true: every entry.")] = None

    NOT_NULL: ClassVar[tuple[str, ...]] = ("method", "url", "body", "path_prefix", "project_id", "prefix", "all")
    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {
        "anyOf": [{"required": ["prefix"]}, {"required": ["url"]}, {"required": ["path_prefix"]},
                  {"required": ["project_id"]}, {"required": ["all"], "properties": {"all": {"const": True}}}],
        "dependentRequired": {"url": ["method"], "method": ["url"], "body": ["url"]},
    }
    """At least one selector; the most specific one given wins (see `selection`)."""


class PurgeResult(BaseModel):
    deleted: int = Field(description="How many entries (variants and Vary indexes included) were deleted.")
    scope: str = Field(description="What was selected: request, path_prefix, project, prefix or all.")


class CacheStatsOut(BaseModel):
    enabled: bool
    backend: str | None = Field(description="in-memory or redis; null when caching is disabled.")
    available: bool = Field(description="Whether the backend answered.")
    stream_responses: bool
    default_ttl_seconds: float
    max_object_bytes: int
    entries: int | None = Field(description="Stored entries (all workers with Redis); null when unknown.")
    bytes: int | None = Field(description="Bytes held by the in-memory backend; null for Redis.")
    max_bytes: int | None = Field(description="The in-memory bound (HTTP_CACHE_MAX_MEMORY_BYTES).")
    evictions: int
    errors: int = Field(description="Failed or timed-out backend calls.")
    hits: int = Field(description="This worker: answers from the cache, conditional hits included.")
    conditional_hits: int
    misses: int
    bypasses: int
    stores: int


def _runtime(request: Request) -> CacheRuntime:
    caching: CacheRuntime | None = request.app.state.cache
    if caching is None:
        raise ManagementError(400, DISABLED, "caching_disabled")
    return caching


def _request_target(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not parts.path.startswith("/") or (parts.scheme and parts.scheme not in ("http", "https")):
        raise ManagementError(400, "invalid URL")
    return parts.path, parts.query


def selection(body: PurgeRequest) -> tuple[str, KeySelector]:
    """The purge's scope and key selector: the most specific selector given wins.

    Precedence: prefix, method+url, path_prefix, project_id, all — so a request never purges more
    than its narrowest selector says. ManagementError when nothing (or only half of method+url)
    was given.
    """
    if body.prefix is not None:
        return "prefix", KeySelector(body.prefix)
    if body.url is not None or body.method is not None:
        if body.url is None or body.method is None:
            raise ManagementError(400, "method and url are required")
        path, query = _request_target(body.url)
        data = body.body.encode() if body.body is not None else None
        return "request", request_selector(body.method, path, query, data, body.project_id)
    if body.path_prefix is not None:
        return "path_prefix", path_selector(body.path_prefix, body.project_id)
    if body.project_id is not None:
        return "project", KeySelector(f"{body.project_id}:")
    if body.all:
        return "all", KeySelector("")
    raise ManagementError(400, NOTHING_SELECTED)


async def purge_cache(request: Request, deps: Deps, trail: Trail) -> Response:
    with trail.action("cache.purge") as act:
        caching = _runtime(request)
        body = await read_body(request, PurgeRequest)
        scope, selector = selection(body)
        act.project_id = body.project_id
        act.details.update(purge_type=scope, method=body.method, url=body.url, prefix=selector.prefix,
                           all_projects=selector.any_project)
        try:
            deleted = await caching.cache.purge(selector)
        except CacheUnavailableError as exc:
            raise ManagementError(503, UNAVAILABLE, "cache_unavailable") from exc
        act.details["deleted"] = deleted
    return json_model(PurgeResult(deleted=deleted, scope=scope))


async def cache_stats(request: Request, deps: Deps) -> Response:
    settings = deps.settings.cache
    caching: CacheRuntime | None = request.app.state.cache
    counters = caching.counters if caching is not None else CacheCounters()
    backend = await caching.cache.stats() if caching is not None else None
    return json_model(CacheStatsOut(
        enabled=caching is not None, backend=backend.backend if backend else None,
        available=backend.available if backend else False, stream_responses=settings.stream_responses,
        default_ttl_seconds=settings.default_ttl, max_object_bytes=settings.max_object_bytes,
        entries=backend.entries if backend else None, bytes=backend.bytes if backend else None,
        max_bytes=backend.max_bytes if backend else None, evictions=backend.evictions if backend else 0,
        errors=backend.errors if backend else 0, hits=counters.hits, conditional_hits=counters.conditional_hits,
        misses=counters.misses, bypasses=counters.bypasses, stores=counters.stores,
    ))


def _error(description: str) -> dict[str, Any]:
    return {"model": Error, "description": description, "headers": REQUEST_ID_HEADER}


PURGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PurgeResult, "description": "The entries were deleted.", "headers": REQUEST_ID_HEADER},
    400: _error("Caching is disabled (`code: caching_disabled`), malformed JSON, a wrong type, "
                "an invalid URL, or no (or more than one) selection."),
    401: _error("Missing, malformed or wrong management token."),
    413: _error("The request body is larger than 1 MiB."),
    503: _error("The cache backend (Redis) did not answer (`code: cache_unavailable`)."),
}
STATS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CacheStatsOut, "description": "Cache settings, contents and this worker's counters.",
          "headers": REQUEST_ID_HEADER},
    401: _error("Missing, malformed or wrong management token."),
}


def add_cache_routes(app: FastAPI, caching: CacheRuntime | None) -> None:
    """Mount the cache endpoints; `caching` is None when HTTP_CACHE_ENABLED is false."""
    app.state.cache = caching
    schema = PurgeRequest.model_json_schema(mode="validation")
    schema.pop("title", None)
    guard = [Depends(require_management_token)]
    app.add_api_route(
        "/manage/cache/purge", purge_cache, methods=["POST"], status_code=200, response_model=None,
        response_class=Response, summary="Delete cached responses", responses=PURGE_RESPONSES,
        operation_id="purge_cache", dependencies=guard,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
    )
    app.add_api_route(
        "/manage/cache/stats", cache_stats, methods=["GET"], status_code=200, response_model=None,
        response_class=Response, summary="Response-cache statistics", responses=STATS_RESPONSES,
        operation_id="cache_stats", dependencies=guard,
    )
