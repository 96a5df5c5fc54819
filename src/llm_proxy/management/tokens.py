"""Token endpoints: issue (the secret is shown once), list, read, update, revoke, bulk revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import Query, Request
from starlette.responses import Response

from llm_proxy.errors import ManagementError
from llm_proxy.management.actions import Trail
from llm_proxy.management.deps import Deps
from llm_proxy.management.params import (
    ActiveOnly,
    ListPageSize,
    Page,
    ProjectId,
    TokenId,
    is_uuid,
    parse_id,
    read_body,
)
from llm_proxy.management.responses import json_model, json_page, offset
from llm_proxy.management.schemas import (
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    RevokeSummary,
    TokenCreate,
    TokenCreated,
    TokenOut,
    TokenUpdate,
)
from llm_proxy.management.spend import changed_limits, limits_update, new_limits, period_of, spend_of
from llm_proxy.records import Project, Token
from llm_proxy.storage import UNSET
from llm_proxy.tokens.format import generate_token, hash_token, token_hint

NOT_FOUND = "token not found"
PROJECT_NOT_FOUND = "project not found"


def token_view(token: Token, spend_usd: float = 0.0) -> TokenOut:
    return TokenOut(
        id=token.id, token=token.token_hint, project_id=token.project_id,
        expires_at=token.expires_at, is_active=token.is_active,
        request_count=token.request_count, max_requests=token.max_requests,
        cache_hit_count=token.cache_hit_count, created_at=token.created_at,
        last_used_at=token.last_used_at, deactivated_at=token.deactivated_at,
        metadata=token.metadata, cost_alert_threshold=token.cost_alert_threshold,
        max_budget=token.max_budget, budget_period=period_of(token.budget_period), spend_usd=spend_usd,
    )


async def _viewed(deps: Deps, token: Token) -> TokenOut:
    spent = await spend_of(deps, "token", [token])
    return token_view(token, spent.get(token.id, 0.0))


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def checked_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if not metadata:
        return {}
    if _depth(metadata) > METADATA_MAX_DEPTH:
        raise ManagementError(400, f"metadata must not nest deeper than {METADATA_MAX_DEPTH} levels")
    size = len(orjson.dumps(metadata))
    if size > METADATA_MAX_BYTES:
        raise ManagementError(
            400, f"metadata must be at most {METADATA_MAX_BYTES} bytes as JSON (got {size})"
        )
    return metadata


async def _project(deps: Deps, project_id: str) -> Project:
    project = await deps.storage.projects.get(project_id.lower()) if is_uuid(project_id) else None
    if project is None:
        raise ManagementError(404, PROJECT_NOT_FOUND)
    return project


async def create_token(request: Request, deps: Deps, trail: Trail) -> Response:
    with trail.action("token.create") as act:
        body = await read_body(request, TokenCreate)
        act.details["requested_duration_minutes"] = body.duration_minutes
        metadata = checked_metadata(body.metadata)
        project = await _project(deps, body.project_id)
        act.project_id = project.id
        if not project.is_active:
            act.details["error_type"] = "project_inactive"
            raise ManagementError(403, "cannot create tokens for inactive projects", "project_inactive")
        secret = generate_token()
        expires_at = deps.clock.now() + timedelta(minutes=body.duration_minutes)
        token = await deps.storage.tokens.create(
            project_id=project.id, token_hash=hash_token(secret), token_hint=token_hint(secret),
            expires_at=expires_at, max_requests=body.max_requests or None, metadata=metadata,
            limits=new_limits(body, body.budget_period),
        )
        act.token_id = token.id
        act.details.update(duration_minutes=body.duration_minutes, expires_at=expires_at.isoformat(),
                           max_requests=token.max_requests or "unlimited")
    deps.token_changed(token.id)
    view = token_view(token).model_dump() | {"token": secret, "token_hint": token.token_hint}
    return json_model(TokenCreated(**view))


ProjectFilter = Annotated[str | None, Query(
    max_length=255, description="Only this project's tokens (a non-UUID matches none).",
)]


async def list_tokens(
    deps: Deps, trail: Trail,
    project_id: ProjectFilter = None,
    legacy_project_id: Annotated[str | None, Query(
        alias="projectId", deprecated=True, max_length=255, description="Old name of project_id.",
    )] = None,
    active_only: ActiveOnly = False, page: Page = 1, page_size: ListPageSize = 50,
) -> Response:
    with trail.action("token.list") as act:
        wanted = project_id if project_id is not None else legacy_project_id
        items, total = await _token_page(deps, wanted, active_only, page, page_size)
        act.project_id = wanted.lower() if wanted is not None and is_uuid(wanted) else None
        act.details.update(token_count=len(items), total_count=total, page=page,
                           filtered_by_project=wanted is not None)
        spent = await spend_of(deps, "token", items)
    return json_page([token_view(t, spent.get(t.id, 0.0)) for t in items], total=total, page=page,
                     page_size=page_size)


async def _token_page(
    deps: Deps, project_id: str | None, active_only: bool, page: int, page_size: int
) -> tuple[list[Token], int]:
    if project_id is not None and not is_uuid(project_id):
        return [], 0
    project = project_id.lower() if project_id is not None else None
    store = deps.storage.tokens
    total = await store.count(project_id=project, active_only=active_only)
    items = await store.list(project_id=project, active_only=active_only, limit=page_size,
                             offset=offset(page, page_size))
    return items, total


async def _existing(deps: Deps, token_id: str) -> Token:
    token = await deps.storage.tokens.get(token_id)
    if token is None:
        raise ManagementError(404, NOT_FOUND)
    return token


async def get_token(token_id: TokenId, deps: Deps, trail: Trail) -> Response:
    with trail.action("token.read") as act:
        act.token_id = tid = parse_id(token_id, NOT_FOUND)
        token = await _existing(deps, tid)
        act.project_id = token.project_id
        view = await _viewed(deps, token)
    return json_model(view)


async def update_token(token_id: TokenId, request: Request, deps: Deps, trail: Trail) -> Response:
    with trail.action("token.update") as act:
        act.token_id = tid = parse_id(token_id, NOT_FOUND)
        body = await read_body(request, TokenUpdate)
        given = body.model_fields_set
        if not given:
            raise ManagementError(400, "no fields to update")
        metadata = checked_metadata(body.metadata) if "metadata" in given else UNSET
        token = await deps.storage.tokens.update(
            tid,
            is_active=body.is_active if body.is_active is not None else UNSET,
            max_requests=(body.max_requests or None) if "max_requests" in given else UNSET,
            metadata=metadata,
            limits=limits_update(body, body.budget_period),
        )
        if token is None:
            raise ManagementError(404, NOT_FOUND)
        act.project_id = token.project_id
        act.details.update(_update_details(body, given, token))
        view = await _viewed(deps, token)
    deps.token_changed(tid)
    return json_model(view)


def _update_details(body: TokenUpdate, given: set[str], token: Token) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if "is_active" in given:
        details["updated_is_active"] = body.is_active
    if "max_requests" in given:
        details["updated_max_requests"] = token.max_requests or "unlimited"
    if "metadata" in given:
        details["updated_metadata_keys"] = sorted(token.metadata)
    return details | changed_limits(body)


async def revoke_token(token_id: TokenId, deps: Deps, trail: Trail) -> Response:
    """Revocation is idempotent: an already revoked token answers 204 too."""
    with trail.action("token.revoke") as act:
        act.token_id = tid = parse_id(token_id, NOT_FOUND)
        was_active = await deps.storage.tokens.revoke(tid)
        if was_active is None:
            raise ManagementError(404, NOT_FOUND)
        act.details["already_revoked"] = not was_active
    deps.token_changed(tid)
    return Response(status_code=204)


async def revoke_project_tokens(project_id: ProjectId, deps: Deps, trail: Trail) -> Response:
    with trail.action("token.revoke_batch") as act:
        act.project_id = pid = parse_id(project_id, PROJECT_NOT_FOUND)
        await _project(deps, pid)
        result = await deps.storage.tokens.revoke_project(pid)
        act.details.update(total_tokens=result.total, revoked_count=result.revoked,
                           already_revoked_count=result.already_revoked, failed_count=0)
    deps.project_changed(pid)
    return json_model(RevokeSummary(
        revoked_count=result.revoked, already_revoked_count=result.already_revoked,
        total_tokens=result.total,
    ))
