"""The audit trail of one management request: every action ends in exactly one audit entry.

`with trail.action("project.update") as act:` records `success` when the block completes,
`failure` with the error's message as `reason` when it raises a ManagementError (4xx), and
`error` when storage or anything else fails. The common fields (actor `management_api`, request
id, client IP, method, path, user agent) come from the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any

from fastapi import Depends, Request

from llm_proxy.audit import AuditRecorder
from llm_proxy.errors import ManagementError, StorageError
from llm_proxy.management.deps import Deps

ACTOR = "management_api"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    request_id: str | None
    correlation_id: str | None
    client_ip: str | None
    method: str
    path: str
    user_agent: str | None
    extra: dict[str, str] = field(default_factory=dict)


def request_info(request: Request, *, trust_proxy_headers: bool) -> RequestInfo:
    headers = request.headers
    client_ip = None
    if trust_proxy_headers:
        forwarded = headers.get("x-forwarded-for", "").split(",")[0].strip()
        client_ip = forwarded or headers.get("x-real-ip", "").strip() or None
    if client_ip is None and request.client is not None:
        client_ip = request.client.host
    extra: dict[str, str] = {}
    if referer := headers.get("x-forwarded-referer"):
        extra["referer"] = referer
    if headers.get("x-admin-origin") == "1":
        extra["origin"] = "admin-ui"
    state = request.scope.get("state", {})
    return RequestInfo(
        request_id=state.get("request_id"),
        correlation_id=state.get("correlation_id"),
        client_ip=client_ip,
        method=request.method,
        path=request.url.path,
        user_agent=headers.get("x-forwarded-user-agent") or headers.get("user-agent"),
        extra=extra,
    )


class AuditTrail:
    def __init__(self, recorder: AuditRecorder, info: RequestInfo) -> None:
        self._recorder = recorder
        self.info = info

    def action(self, name: str, *, project_id: str | None = None) -> Action:
        return Action(self, name, project_id)

    def record(
        self,
        action: str,
        outcome: str,
        *,
        reason: str | None = None,
        project_id: str | None = None,
        token_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        info = self.info
        self._recorder.record(
            action, ACTOR, outcome, project_id=project_id, request_id=info.request_id,
            correlation_id=info.correlation_id, client_ip=info.client_ip, method=info.method, path=info.path,
            user_agent=info.user_agent, reason=reason, token_id=token_id,
            details={**info.extra, **(details or {})},
        )


class Action:
    """One audited action; fill `project_id`, `token_id` and `details` as they become known."""

    def __init__(self, trail: AuditTrail, name: str, project_id: str | None) -> None:
        self._trail = trail
        self.name = name
        self.project_id = project_id
        self.token_id: str | None = None
        self.details: dict[str, Any] = {}

    def __enter__(self) -> Action:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, Exception):
            return
        outcome, reason = _outcome(exc)
        if exc is not None:
            self.details["error"] = reason
        self._trail.record(
            self.name, outcome, reason=reason, project_id=self.project_id,
            token_id=self.token_id, details=self.details,
        )


def _outcome(exc: BaseException | None) -> tuple[str, str | None]:
    if exc is None:
        return "success", None
    if isinstance(exc, ManagementError):
        return "failure", exc.message
    if isinstance(exc, StorageError):
        return "error", str(exc)
    return "error", f"unexpected {type(exc).__name__}"


def get_trail(request: Request, deps: Deps) -> AuditTrail:
    info = request_info(request, trust_proxy_headers=deps.settings.server.trusted_proxy_headers)
    return AuditTrail(deps.audit, info)


Trail = Annotated[AuditTrail, Depends(get_trail)]
