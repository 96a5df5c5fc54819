"""create_management_app: the `/manage/*` FastAPI application, independent of the proxy."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from llm_proxy import __version__
from llm_proxy.management.deps import ManagementDeps
from llm_proxy.management.errors import install_error_handlers
from llm_proxy.management.middleware import MAX_BODY_BYTES, ManagementMiddleware
from llm_proxy.management.openapi import finish_openapi
from llm_proxy.management.routes import add_routes

DESCRIPTION = """\
Projects, tokens and the audit trail of llm-proxy.

Every request needs `Authorization: Bearer <MANAGEMENT_TOKEN>`. Errors are always
`{"error": "<message>"}` (sometimes with `code`) and `Content-Type: application/json`.
Every response carries `X-Request-ID`. The project and token lists return a JSON array and put
the paging in the `X-Total-Count`, `X-Page` and `X-Page-Size` headers (`page` from 1, `page_size`
up to 500); the audit trail (`/manage/audit`) returns an object with `events` and `pagination`
(`page_size` up to 100).
"""


class ManagementApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = get_openapi(title=self.title, version=self.version,
                                 description=self.description, routes=self.routes)
            self.openapi_schema = finish_openapi(schema)
        return self.openapi_schema


def create_management_app(deps: ManagementDeps) -> FastAPI:
    app = ManagementApp(
        title="llm-proxy management API", version=__version__, description=DESCRIPTION,
        openapi_url="/manage/openapi.json", docs_url="/manage/docs", redoc_url=None,
        swagger_ui_oauth2_redirect_url=None, redirect_slashes=False,
    )
    app.state.management = deps
    install_error_handlers(app)
    add_routes(app)
    app.add_middleware(ManagementMiddleware, max_body_bytes=MAX_BODY_BYTES)
    return app
