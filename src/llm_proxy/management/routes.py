"""The route table of the management API: path, method, handler, and every documented status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI
from starlette.responses import Response

from llm_proxy.management import audit, projects, tokens
from llm_proxy.management.auth import require_management_token
from llm_proxy.management.responses import PAGE_HEADERS
from llm_proxy.management.schemas import (
    AuditEventOut,
    AuditPage,
    Error,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
    RequestModel,
    RevokeSummary,
    TokenCreate,
    TokenCreated,
    TokenOut,
    TokenUpdate,
)

Endpoint = Callable[..., Awaitable[Response]]

ERROR_DESCRIPTIONS = {
    400: "Invalid input: malformed JSON, a wrong type, a value out of range, a malformed id.",
    401: "Missing, malformed or wrong management token.",
    403: "The project is inactive (`code: project_inactive`).",
    404: "No such record.",
    409: "A project with this name already exists (`code: duplicate_name`).",
    413: "The request body is larger than 1 MiB.",
    503: "The database (or, for audit queries, the audit store) is unavailable.",
}
REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The client's X-Request-ID when well formed, else a generated one.",
        "required": True, "schema": {"type": "string"},
    },
    "X-Correlation-ID": {
        "description": "The client's X-Correlation-ID when well formed, else the request id.",
        "required": True, "schema": {"type": "string"},
    },
}
PAGE_HEADER_DOCS = {
    "X-Total-Count": "Number of records matching the filters, over all pages.",
    "X-Page": "This page's number (from 1).",
    "X-Page-Size": "The page size used.",
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    endpoint: Endpoint
    status: int
    model: Any
    summary: str
    errors: tuple[int, ...] = ()
    body: type[RequestModel] | None = None
    paged: bool = False
    hidden: bool = False


ROUTES: tuple[Route, ...] = (
    Route("GET", "/manage/projects", projects.list_projects, 200, list[ProjectOut],
          "List projects, ordered by name", paged=True),
    Route("POST", "/manage/projects", projects.create_project, 201, ProjectOut,
          "Create a project", (409,), ProjectCreate),
    Route("GET", "/manage/projects/{project_id}", projects.get_project, 200, ProjectOut,
          "Read a project", (404,)),
    Route("PATCH", "/manage/projects/{project_id}", projects.update_project, 200, ProjectOut,
          "Update, deactivate or reactivate a project", (404, 409), ProjectUpdate),
    Route("DELETE", "/manage/projects/{project_id}", projects.delete_project, 405, None,
          "Projects cannot be deleted", hidden=True),
    Route("POST", "/manage/projects/{project_id}/tokens/revoke", tokens.revoke_project_tokens,
          200, RevokeSummary, "Revoke every token of a project", (404,)),
    Route("GET", "/manage/tokens", tokens.list_tokens, 200, list[TokenOut],
          "List tokens, newest first", paged=True),
    Route("POST", "/manage/tokens", tokens.create_token, 200, TokenCreated,
          "Issue a token (the secret is in this response only)", (403, 404), TokenCreate),
    Route("GET", "/manage/tokens/{token_id}", tokens.get_token, 200, TokenOut,
          "Read a token", (404,)),
    Route("PATCH", "/manage/tokens/{token_id}", tokens.update_token, 200, TokenOut,
          "Update a token (activity, quota, metadata)", (404,), TokenUpdate),
    Route("DELETE", "/manage/tokens/{token_id}", tokens.revoke_token, 204, None,
          "Revoke a token (idempotent)", (404,)),
    Route("GET", "/manage/audit", audit.list_audit_events, 200, AuditPage,
          "Query audit events, newest first"),
    Route("GET", "/manage/audit/{event_id}", audit.get_audit_event, 200, AuditEventOut,
          "Read one audit event", (404,)),
)

# The predecessor also answered on the trailing-slash spellings of the collections.
ALIASES: tuple[Route, ...] = tuple(
    Route(r.method, r.path + "/", r.endpoint, r.status, r.model, r.summary, r.errors, r.body,
          r.paged, hidden=True)
    for r in ROUTES if r.path in {"/manage/projects", "/manage/tokens", "/manage/audit"}
)


def _ok_response(route: Route) -> dict[str, Any]:
    headers: dict[str, Any] = dict(REQUEST_ID_HEADER)
    if route.paged:
        headers |= {name: {"description": PAGE_HEADER_DOCS[name], "required": True,
                           "schema": {"type": "integer"}} for name in PAGE_HEADERS}
    doc: dict[str, Any] = {"description": route.summary, "headers": headers}
    if route.model is not None:
        doc["model"] = route.model
    return doc


def responses(route: Route) -> dict[int | str, dict[str, Any]]:
    statuses = {400, 401, 503, *route.errors} | ({413} if route.body else set())
    docs: dict[int | str, dict[str, Any]] = {route.status: _ok_response(route)}
    for status in sorted(statuses):
        docs[status] = {"model": Error, "description": ERROR_DESCRIPTIONS[status],
                        "headers": REQUEST_ID_HEADER}
    return docs


def request_body(model: type[RequestModel]) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def add_routes(app: FastAPI) -> None:
    """Every route directly on the app (not an included router), so 405s can list `Allow`."""
    for route in ROUTES + ALIASES:
        app.add_api_route(
            route.path, route.endpoint, methods=[route.method], status_code=route.status,
            response_model=None, response_class=Response, summary=route.summary,
            responses=responses(route), include_in_schema=not route.hidden,
            openapi_extra=request_body(route.body) if route.body else None,
            operation_id=None if route.hidden else route.endpoint.__name__,
            dependencies=[Depends(require_management_token)],
        )
