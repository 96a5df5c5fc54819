"""Every error the service raises, and the two ways they are rendered.

    LlmProxyError                      base; the CLI prints str(err) on one line and exits 1
    ├── ConfigError                    bad settings or provider file (one line per problem)
    ├── StorageError                   database unreachable or failing
    │   └── DuplicateError             unique constraint (project name)
    ├── ProxyError                     rendered as an OpenAI-shaped body by `openai_error_body`
    │   (status, type, code, message, param) — see the catalogue in `docs/errors.md`
    └── ManagementError                rendered as {"error": message} by `management_error_body`

Proxy errors keep the predecessor's `code` values (`invalid_token`, `token_expired`, ...)
inside the OpenAI envelope `{"error": {"message", "type", "code", "param"}}`.
"""

from __future__ import annotations

from typing import Any

import orjson


class LlmProxyError(Exception):
    """Base of every error raised on purpose by llm-proxy."""


class ConfigError(LlmProxyError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class StorageError(LlmProxyError):
    """The database could not answer; callers on the proxy path map this to 503."""


class DuplicateError(StorageError):
    """A unique constraint was violated (for example a project name)."""


class ProxyError(LlmProxyError):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return openai_error_body(self.message, self.type, self.code, self.param)


class ManagementError(LlmProxyError):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def openai_error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code, "param": param}})


def management_error_body(message: str, code: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"error": message}
    if code:
        body["code"] = code
    body.update(extra)
    return orjson.dumps(body)


# The proxy-path catalogue (status, code, message, type); names are what the code raises.
def invalid_token(description: str) -> ProxyError:
    return ProxyError(401, f"Invalid token: {description}", "invalid_token", type_="authentication_error")


def token_not_found() -> ProxyError:
    return ProxyError(401, "Token not found", "token_not_found", type_="authentication_error")


def token_inactive() -> ProxyError:
    return ProxyError(401, "Token is inactive", "token_inactive", type_="authentication_error")


def token_expired() -> ProxyError:
    return ProxyError(401, "Token has expired", "token_expired", type_="authentication_error")


def quota_exceeded() -> ProxyError:
    return ProxyError(
        429, "Rate limit exceeded: the token's request quota is used up",
        "rate_limit_exceeded", type_="rate_limit_error",
    )


def project_inactive() -> ProxyError:
    return ProxyError(403, "Project is inactive", "project_inactive", type_="permission_error")


def service_unavailable(detail: str = "the token store is unavailable") -> ProxyError:
    return ProxyError(
        503, f"Service temporarily unavailable: {detail}", "service_unavailable", type_="api_error"
    )


def upstream_auth_error() -> ProxyError:
    return ProxyError(
        503, "Upstream authentication error: failed to load upstream API key",
        "upstream_auth_error", type_="api_error",
    )


def budget_exceeded(scope: str, budget: float, period: str, resets: str | None) -> ProxyError:
    """`scope` is `project` or `token`; `resets` the next period's start (None for `total`)."""
    when = f"; it resets at {resets}" if resets else ""
    amount = f"{budget:.12f}".rstrip("0").rstrip(".")
    return ProxyError(
        429, f"Budget exceeded: the {scope}'s {period} budget of ${amount} is used up{when}",
        "budget_exceeded", type_="insufficient_quota",
    )
