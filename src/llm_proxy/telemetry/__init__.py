"""Observability of the proxy itself: telemetry events, metrics, tracing, cost and logs.

The module-level functions act on one process-wide `Telemetry` registry, `default`, the way
`logging` has one root logger: custom handlers attach by event name from anywhere in the
process (see docs/telemetry.md). Components take a registry as an argument and use `default`
only when given none, so tests can run with a private one.
"""

from __future__ import annotations

import logging

from llm_proxy.telemetry.events import (
    EVENT_NAMES,
    AttachedHandler,
    Handler,
    HandlerExistsError,
    Measurements,
    Metadata,
    Telemetry,
    TelemetrySpan,
    logging_handler,
)

__all__ = [
    "EVENT_NAMES", "AttachedHandler", "Handler", "HandlerExistsError", "Measurements", "Metadata",
    "Telemetry", "TelemetrySpan", "attach", "attach_default_logger", "attach_many", "default", "detach",
    "execute", "list_handlers", "span",
]

default = Telemetry()

attach = default.attach
attach_many = default.attach_many
detach = default.detach
list_handlers = default.list_handlers
execute = default.execute
span = default.span

DEFAULT_LOGGER_ID = "llm_proxy.default_logger"


def attach_default_logger(level: int | str = logging.DEBUG, telemetry: Telemetry | None = None) -> None:
    """Log every documented event (name, measurements, scalar metadata) at `level`."""
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    (telemetry or default).attach_many(DEFAULT_LOGGER_ID, EVENT_NAMES, logging_handler(numeric))
