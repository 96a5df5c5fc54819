"""The management-token check: `Authorization: Bearer <MANAGEMENT_TOKEN>`, compared in constant time."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llm_proxy.errors import ManagementError
from llm_proxy.management.actions import Trail
from llm_proxy.management.deps import Deps
from llm_proxy.tokens.format import constant_time_equals

MISSING_HEADER = "missing or invalid Authorization header"
WRONG_CREDENTIALS = "invalid management token"

# Declares the scheme in the OpenAPI document; the check below reads the header itself so that
# its messages and the constant-time comparison are ours.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="ManagementToken",
    description="The value of MANAGEMENT_TOKEN, as `Authorization: Bearer <token>`.",
)


def presented_token(header: str | None) -> str | None:
    if header is None or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip() or None


async def require_management_token(
    request: Request,
    deps: Deps,
    trail: Trail,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> None:
    token = presented_token(request.headers.get("authorization"))
    expected = deps.settings.server.management_token
    if token is None:
        reason = MISSING_HEADER
    elif not expected or not constant_time_equals(token, expected):
        reason = WRONG_CREDENTIALS
    else:
        return
    trail.record("management.auth", "denied", reason=reason)
    raise ManagementError(401, reason)
