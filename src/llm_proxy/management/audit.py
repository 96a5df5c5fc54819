"""Audit query endpoints: the paginated, filterable list and one event by id."""

from __future__ import annotations

import math

import orjson
from starlette.responses import Response

from llm_proxy.errors import ManagementError
from llm_proxy.management.actions import Trail
from llm_proxy.management.deps import Deps
from llm_proxy.management.params import (
    AuditPageSize,
    EventId,
    Page,
    TextFilter,
    TimeFilter,
    parse_id,
    parse_time,
)
from llm_proxy.management.responses import json_model
from llm_proxy.management.schemas import AuditEventOut, AuditPage, Pagination
from llm_proxy.records import AuditEntry, AuditQuery


def event_view(entry: AuditEntry) -> AuditEventOut:
    return AuditEventOut(
        id=entry.id, timestamp=entry.timestamp, action=entry.action, actor=entry.actor,
        outcome=entry.outcome, project_id=entry.project_id, request_id=entry.request_id,
        correlation_id=entry.correlation_id, client_ip=entry.client_ip, method=entry.method,
        path=entry.path, user_agent=entry.user_agent, reason=entry.reason,
        token_id=entry.token_id,
        metadata=orjson.dumps(entry.details).decode() if entry.details else None,
        details=entry.details,
    )


def _require_store(deps: Deps, message: str) -> None:
    if not deps.audit.queryable:
        raise ManagementError(503, message, "audit_unavailable")


async def list_audit_events(  # noqa: PLR0913 - one parameter per documented filter
    deps: Deps, trail: Trail, *,
    action: TextFilter = None, actor: TextFilter = None, outcome: TextFilter = None,
    project_id: TextFilter = None, client_ip: TextFilter = None, request_id: TextFilter = None,
    correlation_id: TextFilter = None, method: TextFilter = None, path: TextFilter = None,
    search: TextFilter = None, start_time: TimeFilter = None, end_time: TimeFilter = None,
    page: Page = 1, page_size: AuditPageSize = 20,
) -> Response:
    _require_store(deps, "audit events not available")
    filters = AuditQuery(
        action=action, actor=actor, outcome=outcome, project_id=project_id, client_ip=client_ip,
        request_id=request_id, correlation_id=correlation_id, method=method, path=path,
        search=search, start_time=parse_time(start_time, "start_time"),
        end_time=parse_time(end_time, "end_time"),
    )
    with trail.action("audit.list") as act:
        entries, total = await deps.storage.audit.query(filters, page=page, page_size=page_size)
        pages = math.ceil(total / page_size)
        act.details.update(events_count=len(entries), page=page, page_size=page_size,
                           total_count=total)
    pagination = Pagination(page=page, page_size=page_size, total_count=total, total_pages=pages,
                            has_next=page < pages, has_prev=page > 1)
    return json_model(AuditPage(events=[event_view(e) for e in entries], pagination=pagination))


async def get_audit_event(event_id: EventId, deps: Deps, trail: Trail) -> Response:
    _require_store(deps, "audit event not available")
    with trail.action("audit.show") as act:
        entry_id = parse_id(event_id, "audit event not found")
        act.details["audit_event_id"] = entry_id
        entry = await deps.storage.audit.get(entry_id)
        if entry is None:
            raise ManagementError(404, "audit event not found")
    return json_model(event_view(entry))

