"""The composition root: `create_app(settings)` returns the ASGI application of one worker.

Routing is a prefix switch, not a framework router, because /v1/* is the hot path:
    /v1/*                          → InstrumentationMiddleware → ProxyEndpoint
    /health /ready /live           → HealthEndpoints
    /metrics /metrics/prometheus   → MetricsEndpoints (METRICS_PATH; when ENABLE_METRICS)
    /manage/*                      → the FastAPI management app (OpenAPI at /manage/openapi.json)
    anything else                  → 404 JSON
Resources are opened in the ASGI lifespan (see `services.py`), so importing this module does no I/O.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from llm_proxy.errors import LlmProxyError
from llm_proxy.health import HealthEndpoints, send_json
from llm_proxy.management import ManagementDeps, create_management_app
from llm_proxy.management.cache import add_cache_routes
from llm_proxy.middleware.instrumentation import InstrumentationMiddleware
from llm_proxy.services import Services
from llm_proxy.settings import Settings, load_settings
from llm_proxy.telemetry import Telemetry
from llm_proxy.telemetry.exposition import MetricsEndpoints
from llm_proxy.telemetry.logs import configure_logging

log = logging.getLogger("llm_proxy.app")

ASGIApp = Any


class LlmProxyApp:
    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.services: Services | None = None
        self._proxy: ASGIApp = None
        self._management: ASGIApp = None
        self._health: HealthEndpoints | None = None
        self._metrics: MetricsEndpoints | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/v1/") and self._proxy is not None:
                await self._proxy(scope, receive, send)
            elif path.startswith("/manage") and self._management is not None:
                await self._management(scope, receive, send)
            elif self._health is not None and path in HealthEndpoints.paths:
                await self._health(scope, receive, send)
            elif self._metrics is not None and path in self._metrics.paths:
                await self._metrics(scope, receive, send)
            elif self.services is None:
                await send_json(send, 503, {"error": "starting up"})
            else:
                await send_json(send, 404, {"error": f"not found: {path}"})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def startup(self) -> None:
        services = await Services.open(self.settings, telemetry=self.telemetry)
        self.services = services
        self._proxy = self._build_proxy_stack(services)
        self._management = create_management_app(ManagementDeps(
            settings=self.settings, storage=services.storage, audit=services.audit, clock=services.clock,
            on_token_change=services.authenticator.forget_token,
            on_project_change=services.authenticator.forget_project,
        ))
        add_cache_routes(self._management, services.caching)
        self._health = HealthEndpoints(_ready_checks(services))
        # Everything built so far lives as long as the process: moving it out of the collector's
        # generations keeps full collections short, which cuts the latency tail under load.
        gc.collect()
        gc.freeze()
        self._metrics = services.metrics.endpoints() if services.metrics is not None else None

    async def shutdown(self) -> None:
        if self.services is not None:
            await self.services.aclose()
            self.services = None

    def _build_proxy_stack(self, services: Services) -> ASGIApp:
        app: ASGIApp = services.proxy
        observed = self.settings.observability.enabled
        if observed or services.metrics is not None or services.tracing is not None or services.budget is not None:
            app = InstrumentationMiddleware(app, bus=services.bus if observed else None,
                                            settings=self.settings.observability, telemetry=services.telemetry,
                                            prices=services.prices,
                                            trace_start=services.tracing.start if services.tracing else None,
                                            trace_end=services.tracing.end if services.tracing else None)
        return app

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except LlmProxyError as exc:
                    log.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    log.exception("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _ready_checks(services: Services) -> dict[str, tuple[Any, bool]]:
    async def database() -> tuple[bool, str]:
        await services.storage.ping()
        current, head = await services.storage.migration_status()
        if current != head:
            return False, f"migrations pending: at {current}, head {head}"
        return True, f"migrations at {current}"

    async def event_bus() -> tuple[bool, str]:
        readiness = services.bus.ready()
        return readiness.ok, readiness.reason or "ok"

    return {"database": (database, True), "event_bus": (event_bus, False)}


def create_app(settings: Settings, telemetry: Telemetry | None = None) -> LlmProxyApp:
    return LlmProxyApp(settings, telemetry)


def create_app_from_environment() -> LlmProxyApp:
    """Factory for `uvicorn --factory` worker processes: settings come from the environment."""
    settings = load_settings()
    configure_logging(settings.log)
    return create_app(settings)
