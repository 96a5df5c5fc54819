"""Strict parsing of what arrives as text: query numbers and booleans, ids, RFC 3339 times, bodies."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Path, Query, Request
from pydantic import BeforeValidator, ValidationError

from llm_proxy.errors import ManagementError
from llm_proxy.management.errors import first_error_message
from llm_proxy.management.schemas import NO_CONTROL_PATTERN, UUID_PATTERN, RequestModel

M = TypeVar("M", bound=RequestModel)

_INTEGER = re.compile(r"[+-]?[0-9]+")
_UUID = re.compile(UUID_PATTERN)
_MIN = datetime.min.replace(tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)


def _strict_integer(value: Any) -> Any:
    """Query integers are plain digits: no `1.0`, `1_000` or surrounding spaces."""
    if isinstance(value, str) and not _INTEGER.fullmatch(value):
        raise ValueError("must be an integer")
    return value


Page = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1."),
                 BeforeValidator(_strict_integer)]
ListPageSize = Annotated[int, Query(ge=1, le=500, description="Items per page (max 500)."),
                         BeforeValidator(_strict_integer)]
AuditPageSize = Annotated[int, Query(ge=1, le=100, description="Events per page (max 100)."),
                          BeforeValidator(_strict_integer)]
ActiveOnly = Annotated[bool, Query(description="Only active (and, for tokens, unexpired) records.")]
TextFilter = Annotated[str | None, Query(max_length=1024, pattern=NO_CONTROL_PATTERN)]
TimeFilter = Annotated[str | None, Query(
    json_schema_extra={"format": "date-time"}, description="RFC 3339 date-time, e.g. 2025-01-31T00:00:00Z.",
)]


def _id_path(what: str) -> Any:
    return Path(description=f"The {what} id (a UUID).",
                json_schema_extra={"format": "uuid", "pattern": UUID_PATTERN})


# Checked by `parse_id` inside the handlers, so that a malformed id is audited like any failure.
ProjectId = Annotated[str, _id_path("project")]
TokenId = Annotated[str, _id_path("token")]
EventId = Annotated[str, _id_path("audit event")]


def parse_id(value: str, not_found: str) -> str:
    """A canonical lowercase UUID; anything else names no record, so 404 with `not_found`.

    Ids never reach the database unchecked (a PostgreSQL UUID comparison would fail on them).
    """
    if not _UUID.fullmatch(value):
        raise ManagementError(404, not_found)
    return value.lower()


def is_uuid(value: str) -> bool:
    return _UUID.fullmatch(value) is not None


def parse_time(value: str | None, name: str) -> datetime | None:
    """RFC 3339 with offset; a valid leap second counts as :59.999999, year 0 as the minimum."""
    if value is None:
        return None
    parsed = _rfc3339(value)
    if parsed is None:
        raise ManagementError(400, f"{name} must be an RFC 3339 date-time (2025-01-31T00:00:00Z)")
    return parsed


def _offset(text: str) -> timedelta | None:
    if text in {"Z", "z"}:
        return timedelta(0)
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        return None
    return (-1 if text[0] == "-" else 1) * timedelta(hours=hours, minutes=minutes)


def _rfc3339(value: str) -> datetime | None:
    match = _RFC3339.fullmatch(value)
    offset = _offset(match.group(8)) if match else None
    if match is None or offset is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    micro = int((match.group(7) or ".0")[1:7].ljust(6, "0"))
    leap = second == 60
    try:
        local = datetime(year if year >= 1 else 2000, month, day, hour, minute, 59 if leap else second, micro,
                         tzinfo=UTC)
        utc = local - offset
    except ValueError:
        return None
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if offset < timedelta(0) else _MIN
    if leap and (utc.hour, utc.minute) != (23, 59):
        return None
    if year < 1:
        return _MIN
    return utc.replace(microsecond=999_999) if leap else utc


async def read_body(request: Request, model: type[M]) -> M:
    """Parse the JSON body whatever its Content-Type (predecessor clients omit it)."""
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ManagementError(400, "invalid request body: malformed JSON") from None
    if not isinstance(data, dict):
        raise ManagementError(400, "invalid request body: expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ManagementError(400, first_error_message(exc.errors(), model.MESSAGES)) from None
