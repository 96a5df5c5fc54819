"""JSON responses of the management API (bodies always come from the documented models)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel
from starlette.responses import Response

PAGE_HEADERS = ("X-Total-Count", "X-Page", "X-Page-Size")


def json_model(model: BaseModel, status: int = 200,
               headers: Mapping[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


def json_page(items: Sequence[BaseModel], *, total: int, page: int, page_size: int) -> Response:
    """A JSON array (the predecessor's list shape) with the paging in headers."""
    body = "[" + ",".join(item.model_dump_json() for item in items) + "]"
    headers = dict(zip(PAGE_HEADERS, (str(total), str(page), str(page_size)), strict=True))
    return Response(body, media_type="application/json", headers=headers)


def offset(page: int, page_size: int) -> int:
    return (page - 1) * page_size
