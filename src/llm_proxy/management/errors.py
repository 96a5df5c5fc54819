"""Rendering of management errors: always `{"error": message}` JSON with a JSON content type.

Validation failures (pydantic or FastAPI's) become 400 with one sentence naming the first bad
field, never FastAPI's 422 `detail` list. Storage failures become 503, never 500.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from llm_proxy.errors import DuplicateError, ManagementError, StorageError

log = logging.getLogger("llm_proxy.management")

_KINDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "string_type": "a string", "bool_type": "a boolean", "bool_parsing": "a boolean",
    "dict_type": "a JSON object", "model_type": "a JSON object", "float_type": "a number",
}
_STATUS_TEXT = {404: "not found", 405: "method not allowed", 400: "bad request"}


def error_response(
    status: int, error: str, code: str | None = None, *,
    headers: Mapping[str, str] | None = None, **extra: Any,
) -> Response:
    body: dict[str, Any] = {"error": error, **({"code": code} if code else {}), **extra}
    return Response(
        orjson.dumps(body), status_code=status,
        media_type="application/json", headers=dict(headers or {}),
    )


def field_name(loc: Iterable[int | str]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts)


_TEMPLATES = {
    "missing": "{field} is required",
    "extra_forbidden": "unknown field: {field}",
    "greater_than_equal": "{field} must be >= {ge}",
    "less_than_equal": "{field} must be <= {le}",
    "string_too_short": "{field} must not be empty",
    "string_too_long": "{field} must be at most {max_length} characters",
    "string_pattern_mismatch": "{field} has an invalid format",
    "value_error": "{field} {error}",
    **{kind: "{field} must be " + what for kind, what in _KINDS.items()},
}


def describe_error(error: ErrorDetails, messages: Mapping[tuple[str, str], str]) -> str:
    """One sentence for one pydantic error, preferring the model's own (predecessor) messages."""
    field = field_name(error["loc"])
    kind = error["type"]
    if (field, kind) in messages:
        return messages[(field, kind)]
    if not field:
        if kind in {"model_type", "dict_type", "model_attributes_type"}:
            return "invalid request body: expected a JSON object"
        if "field" in (error.get("ctx") or {}):
            return error["msg"]
        return f"invalid request body: {error['msg']}"
    template = _TEMPLATES.get(kind)
    ctx = {key: value for key, value in (error.get("ctx") or {}).items() if key != "field"}
    try:
        return template.format(field=field, **ctx) if template else f"{field}: {error['msg']}"
    except (KeyError, IndexError):
        return f"{field}: {error['msg']}"


def first_error_message(
    errors: Iterable[ErrorDetails], messages: Mapping[tuple[str, str], str] | None = None
) -> str:
    for error in errors:
        return describe_error(error, messages or {})
    return "invalid request"


def allowed_methods(app: FastAPI, scope: Mapping[str, Any]) -> list[str]:
    """Methods of the documented routes whose path matches the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            match, _ = route.matches(dict(scope))
            if match != Match.NONE:
                methods |= route.methods or set()
    return sorted(methods)


async def _management_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ManagementError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, exc.message, exc.code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors: list[ErrorDetails] = list(exc.errors())
    return error_response(400, first_error_message(errors))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
    message = _STATUS_TEXT.get(exc.status_code) or str(exc.detail).lower()
    return error_response(exc.status_code, message, headers=headers)


async def _duplicate_error(request: Request, exc: Exception) -> Response:
    return error_response(409, "already exists", "duplicate")


async def _storage_error(request: Request, exc: Exception) -> Response:
    log.error("management request failed: %s", exc)
    return error_response(503, "database unavailable", "storage_unavailable")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ManagementError, _management_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DuplicateError, _duplicate_error)
    app.add_exception_handler(StorageError, _storage_error)
