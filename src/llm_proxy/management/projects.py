"""Project endpoints: list, create, read, update (incl. deactivation), and the refused delete."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from llm_proxy.errors import DuplicateError, ManagementError
from llm_proxy.management.actions import Trail
from llm_proxy.management.deps import Deps
from llm_proxy.management.errors import allowed_methods, error_response
from llm_proxy.management.params import (
    ActiveOnly,
    ListPageSize,
    Page,
    ProjectId,
    is_uuid,
    parse_id,
    read_body,
)
from llm_proxy.management.responses import json_model, json_page, offset
from llm_proxy.management.schemas import ProjectCreate, ProjectOut, ProjectUpdate
from llm_proxy.management.spend import LIMIT_FIELDS, limits_update, new_limits, period_of, spend_of
from llm_proxy.records import Project
from llm_proxy.storage import UNSET, Unset
from llm_proxy.tokens.format import looks_obfuscated, obfuscate_api_key

NOT_FOUND = "project not found"
OBFUSCATED_KEY = "cannot save obfuscated API key - please provide the full API key"
REVOKE_MISUSE = "revoke_tokens requires is_active=false"


def project_view(project: Project, spend_usd: float = 0.0) -> ProjectOut:
    return ProjectOut(
        id=project.id, name=project.name, api_key=obfuscate_api_key(project.api_key),
        is_active=project.is_active, deactivated_at=project.deactivated_at,
        created_at=project.created_at, updated_at=project.updated_at,
        cost_alert_threshold=project.cost_alert_threshold, max_budget=project.max_budget,
        budget_period=period_of(project.budget_period), spend_usd=spend_usd,
    )


async def _viewed(deps: Deps, project: Project) -> ProjectOut:
    spent = await spend_of(deps, "project", [project])
    return project_view(project, spent.get(project.id, 0.0))


def _duplicate_name() -> ManagementError:
    return ManagementError(409, "a project with this name already exists", "duplicate_name")


async def list_projects(
    deps: Deps, trail: Trail, page: Page = 1, page_size: ListPageSize = 50,
    active_only: ActiveOnly = False,
) -> Response:
    with trail.action("project.list") as act:
        store = deps.storage.projects
        total = await store.count(active_only=active_only)
        items = await store.list(active_only=active_only, limit=page_size,
                                 offset=offset(page, page_size))
        act.details.update(project_count=len(items), total_count=total, page=page)
        spent = await spend_of(deps, "project", items)
    return json_page([project_view(p, spent.get(p.id, 0.0)) for p in items], total=total, page=page,
                     page_size=page_size)


async def create_project(request: Request, deps: Deps, trail: Trail) -> Response:
    with trail.action("project.create") as act:
        body = await read_body(request, ProjectCreate)
        act.details["project_name"] = body.name
        if looks_obfuscated(body.api_key):
            raise ManagementError(400, OBFUSCATED_KEY)
        try:
            project = await deps.storage.projects.create(
                body.name, body.api_key, limits=new_limits(body, body.budget_period))
        except DuplicateError:
            raise _duplicate_name() from None
        act.project_id = project.id
        act.details["project_id"] = project.id
    deps.project_changed(project.id)
    return json_model(project_view(project), 201)


async def get_project(project_id: ProjectId, deps: Deps, trail: Trail) -> Response:
    with trail.action("project.read") as act:
        act.project_id = pid = parse_id(project_id, NOT_FOUND)
        project = await deps.storage.projects.get(pid)
        if project is None:
            raise ManagementError(404, NOT_FOUND)
        view = await _viewed(deps, project)
    return json_model(view)


async def update_project(project_id: ProjectId, request: Request, deps: Deps, trail: Trail) -> Response:
    with trail.action("project.update") as act:
        act.project_id = pid = parse_id(project_id, NOT_FOUND)
        body = await read_body(request, ProjectUpdate)
        if body.revoke_tokens is not None and body.is_active is not False:
            raise ManagementError(400, REVOKE_MISUSE)
        current = await deps.storage.projects.get(pid)
        if current is None:
            raise ManagementError(404, NOT_FOUND)
        updated = await _apply_update(deps, pid, body)
        fields = _updated_fields(body, current, updated)
        act.details.update(updated_fields=fields, project_name=updated.name)
        if body.revoke_tokens and current.is_active and not updated.is_active:
            result = await deps.storage.tokens.revoke_project(pid)
            act.details["tokens_revoked"] = result.revoked
        view = await _viewed(deps, updated)
    deps.project_changed(pid)
    return json_model(view)


async def _apply_update(deps: Deps, project_id: str, body: ProjectUpdate) -> Project:
    api_key: str | Unset = UNSET
    if body.api_key:
        if looks_obfuscated(body.api_key):
            raise ManagementError(400, OBFUSCATED_KEY)
        api_key = body.api_key
    try:
        updated = await deps.storage.projects.update(
            project_id,
            name=body.name if body.name is not None else UNSET,
            api_key=api_key,
            is_active=body.is_active if body.is_active is not None else UNSET,
            limits=limits_update(body, body.budget_period),
        )
    except DuplicateError:
        raise _duplicate_name() from None
    if updated is None:
        raise ManagementError(404, NOT_FOUND)
    return updated


def _updated_fields(body: ProjectUpdate, before: Project, after: Project) -> list[str]:
    given = {"name": body.name is not None, "api_key": bool(body.api_key),
             "is_active": body.is_active is not None,
             "deactivated_at": before.is_active != after.is_active,
             **{name: name in body.model_fields_set for name in LIMIT_FIELDS}}
    return [name for name, changed in given.items() if changed]


async def delete_project(project_id: ProjectId, request: Request, trail: Trail) -> Response:
    """Projects are never deleted (their tokens and audit history refer to them): 405."""
    reason = "project deletion is not permitted"
    trail.record("project.delete", "failure", reason=reason,
                 project_id=project_id.lower() if is_uuid(project_id) else None,
                 details={"error_type": "method not allowed"})
    allow = ", ".join(allowed_methods(request.app, request.scope))
    return error_response(405, "method not allowed", message=reason, headers={"Allow": allow})
