"""Telemetry events: named, synchronous lifecycle signals that handlers attach to by name.

Names read `llm_proxy.<component>.<operation>.<phase>` (see docs/telemetry.md for the catalogue).
`execute(name, measurements, metadata)` calls every handler attached to exactly that name, in
attach order, in the caller's thread and context; with none attached it is one dict lookup, so
emitting on the request path is cheap. A handler that raises is detached at once and logged
once: a broken handler never breaks a request, and never fails twice.

The attach table is copy-on-write, so handlers may attach or detach (themselves included) while
an event is being delivered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

log = logging.getLogger("llm_proxy.telemetry")

Measurements = Mapping[str, Any]
Metadata = Mapping[str, Any]
Handler = Callable[[str, Measurements, Metadata, Any], None]
"""`handler(event_name, measurements, metadata, config)`; its return value is ignored."""


class HandlerExistsError(ValueError):
    """A handler with this id is already attached."""


@dataclass(frozen=True, slots=True)
class AttachedHandler:
    handler_id: str
    event_name: str
    function: Handler
    config: Any


class Telemetry:
    """A registry of handlers and the `execute`/`span` calls that reach them."""

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[AttachedHandler, ...]] = {}
        self._by_id: dict[str, tuple[AttachedHandler, ...]] = {}
        self._span_names: dict[str, tuple[str, str, str]] = {}
        self.installed: set[str] = set()
        """The TELEMETRY_HANDLERS entries already run against this registry (each runs once)."""

    def attach(self, handler_id: str, event_name: str, handler: Handler, config: Any = None) -> None:
        self.attach_many(handler_id, (event_name,), handler, config)

    def attach_many(self, handler_id: str, event_names: Iterable[str], handler: Handler,
                    config: Any = None) -> None:
        """Attach one handler to several names under one id; `detach(handler_id)` removes all."""
        if handler_id in self._by_id:
            raise HandlerExistsError(f"a telemetry handler with id {handler_id!r} is already attached")
        attached = tuple(AttachedHandler(handler_id, name, handler, config) for name in event_names)
        by_name = dict(self._by_name)
        for entry in attached:
            by_name[entry.event_name] = (*by_name.get(entry.event_name, ()), entry)
        self._by_name = by_name
        self._by_id = {**self._by_id, handler_id: attached}

    def detach(self, handler_id: str) -> bool:
        """Remove a handler from every name it was attached to; False if it was not attached."""
        if handler_id not in self._by_id:
            return False
        by_id = dict(self._by_id)
        del by_id[handler_id]
        by_name: dict[str, tuple[AttachedHandler, ...]] = {}
        for name, entries in self._by_name.items():
            kept = tuple(e for e in entries if e.handler_id != handler_id)
            if kept:
                by_name[name] = kept
        self._by_name, self._by_id = by_name, by_id
        return True

    def list_handlers(self, prefix: str = "") -> list[AttachedHandler]:
        """Handlers attached to a name that starts with `prefix`, by name then attach order."""
        return [e for name in sorted(self._by_name) if name.startswith(prefix) for e in self._by_name[name]]

    def has_handlers(self, event_name: str) -> bool:
        return event_name in self._by_name

    def execute(self, event_name: str, measurements: Measurements, metadata: Metadata) -> None:
        handlers = self._by_name.get(event_name)
        if handlers is None:
            return
        for entry in handlers:
            try:
                entry.function(event_name, measurements, metadata, entry.config)
            except Exception:  # a handler bug must never reach the code that emitted the event
                self.detach(entry.handler_id)
                log.exception("telemetry handler %r failed on %s and was detached", entry.handler_id, event_name)

    def span(self, event_prefix: str, metadata: dict[str, Any]) -> TelemetrySpan | _NoSpan:
        """A context manager emitting `<prefix>.start`, then `.stop` or `.exception`.

        It yields `metadata`, which the body may extend: `.stop` and `.exception` carry it as it
        is then. Measurements: start `{monotonic_time, system_time}`; stop
        `{duration, monotonic_time}`; exception `{duration, monotonic_time}` with `kind` (the
        exception class name), `reason` (the exception) and `code` (its `code` attribute, if
        any) added to the metadata. Durations are seconds.
        """
        names = self._span_names.get(event_prefix)
        if names is None:
            names = (f"{event_prefix}.start", f"{event_prefix}.stop", f"{event_prefix}.exception")
            self._span_names[event_prefix] = names
        by_name = self._by_name
        if names[0] in by_name or names[1] in by_name or names[2] in by_name:
            return TelemetrySpan(self, names, metadata)
        return _NoSpan(metadata)


class TelemetrySpan:
    __slots__ = ("_metadata", "_names", "_started", "_telemetry")

    def __init__(self, telemetry: Telemetry, names: tuple[str, str, str], metadata: dict[str, Any]) -> None:
        self._telemetry = telemetry
        self._names = names
        self._metadata = metadata
        self._started = 0.0

    def __enter__(self) -> dict[str, Any]:
        self._started = now = time.monotonic()
        if self._names[0] in self._telemetry._by_name:
            self._telemetry.execute(self._names[0], {"monotonic_time": now, "system_time": time.time()},
                                    self._metadata)
        return self._metadata

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        now = time.monotonic()
        measurements = {"duration": now - self._started, "monotonic_time": now}
        if error is None:
            self._telemetry.execute(self._names[1], measurements, self._metadata)
            return
        self._metadata.update(kind=type(error).__name__, reason=error, code=getattr(error, "code", None))
        self._telemetry.execute(self._names[2], measurements, self._metadata)


class _NoSpan:
    """What `span` returns when nobody listens: no clock reads, no calls."""

    __slots__ = ("_metadata",)

    def __init__(self, metadata: dict[str, Any]) -> None:
        self._metadata = metadata

    def __enter__(self) -> dict[str, Any]:
        return self._metadata

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        return None


def logging_handler(level: int) -> Handler:
    """A handler that logs each event at `level` on the `llm_proxy.telemetry` logger."""
    def handle(event_name: str, measurements: Measurements, metadata: Metadata, config: Any) -> None:
        if log.isEnabledFor(level):
            fields = {k: v for k, v in metadata.items() if isinstance(v, str | int | float | bool) or v is None}
            log.log(level, event_name, extra={"measurements": dict(measurements), "metadata": fields})
    return handle


def _span_phases(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}.start", f"{prefix}.stop", f"{prefix}.exception"


EVENT_NAMES: tuple[str, ...] = (
    *_span_phases("llm_proxy.proxy.request"),
    *_span_phases("llm_proxy.auth"),
    *_span_phases("llm_proxy.cache.lookup"),
    *_span_phases("llm_proxy.upstream.request"),
    "llm_proxy.rate_limit.exceeded",
    "llm_proxy.cache.hit", "llm_proxy.cache.miss", "llm_proxy.cache.put", "llm_proxy.cache.evicted",
    "llm_proxy.cost.calculated", "llm_proxy.cost.threshold_exceeded",
    "llm_proxy.bus.published", "llm_proxy.bus.dropped", "llm_proxy.bus.spooled",
    "llm_proxy.dispatcher.delivered", "llm_proxy.dispatcher.failed",
)
"""Every documented event name (docs/telemetry.md describes measurements and metadata)."""


def install_handlers(telemetry: Telemetry, import_strings: Iterable[str]) -> None:
    """Call each `module:function` (TELEMETRY_HANDLERS) with the registry, so it can attach."""
    import importlib

    from llm_proxy.errors import ConfigError

    for spec in import_strings:
        if spec in telemetry.installed:
            continue
        module_name, _, attribute = spec.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError([f"TELEMETRY_HANDLERS: cannot load {spec}: {exc}"]) from exc
        target(telemetry)
        telemetry.installed.add(spec)
