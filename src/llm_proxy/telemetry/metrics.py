"""Every metric, declared once, and the telemetry handlers that record them.

`RequestMetrics` is attached to `llm_proxy.proxy.request.stop` (and `llm_proxy.cache.evicted`)
and records each call into the worker's `ValueStore`; `RuntimeMetrics` copies the event bus's
counters and the process readings into the store once a second and before each scrape.

Cardinality is bounded: labels are provider, model (at most `max_model_labels` distinct values
per worker, later ones become `other`), status code and error reason. The project id is a label
of the request, token and cost counters only when `METRICS_PROJECT_LABELS=true`; histograms
never carry it.
"""

from __future__ import annotations

import logging
import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llm_proxy.telemetry.events import Telemetry
from llm_proxy.telemetry.runtime import read_runtime
from llm_proxy.telemetry.store import ValueStore

log = logging.getLogger("llm_proxy.metrics")

DURATION_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
                    81.92)
"""The GenAI semantic conventions' duration advice, plus 5 ms at the bottom."""
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_INTERVAL = 0.1
"""Seconds between two lag probes of the event loop."""


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str
    kind: str
    """counter, gauge or histogram."""
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    live: str = "sum"
    """How gauges combine over live workers: sum, min or max (counters always sum over all)."""

    @property
    def width(self) -> int:
        return len(self.buckets) + 2 if self.kind == "histogram" else 1


def _c(name: str, help_: str, *labels: str) -> Instrument:
    return Instrument(name, "counter", help_, labels)


def _h(name: str, help_: str, buckets: tuple[float, ...], *labels: str) -> Instrument:
    return Instrument(name, "histogram", help_, labels, buckets)


def _g(name: str, help_: str, *labels: str, live: str = "sum") -> Instrument:
    return Instrument(name, "gauge", help_, labels, live=live)


REQUESTS = _c("llm_proxy_requests_total", "Proxied /v1 calls answered, cache hits and rejections included.",
              "provider", "model", "code")
ERRORS = _c("llm_proxy_errors_total", "Proxied calls answered with status >= 400; reason is the proxy's "
            "error code, or upstream.", "provider", "code", "reason")
CACHE_HITS = _c("llm_proxy_cache_hits_total", "Calls answered from the response cache.")
CACHE_MISSES = _c("llm_proxy_cache_misses_total", "Cacheable calls not found in the cache.")
CACHE_BYPASS = _c("llm_proxy_cache_bypass_total", "Calls that skipped the cache (not cacheable or no-cache).")
CACHE_STORES = _c("llm_proxy_cache_stores_total", "Responses stored in the cache.")
CACHE_EVICTIONS = _c("llm_proxy_cache_evictions_total", "Cache entries evicted to stay within bounds.")
REQUEST_DURATION = _h("llm_proxy_request_duration_seconds", "Time from the request's arrival to its last "
                      "response byte.", DURATION_BUCKETS, "provider", "model")
UPSTREAM_DURATION = _h("llm_proxy_upstream_duration_seconds", "Time from sending the upstream request to its "
                       "last byte.", DURATION_BUCKETS, "provider", "model")
OVERHEAD = _h("llm_proxy_overhead_seconds", "Request duration minus upstream duration: the proxy's own time.",
              OVERHEAD_BUCKETS, "provider")
TTFT = _h("llm_proxy_time_to_first_token_seconds", "Streams: time from the request's arrival to the first "
          "body chunk sent to the client.", DURATION_BUCKETS, "provider", "model")
TOKENS = _c("llm_proxy_tokens_total", "Tokens by type: input (includes cached), output (includes reasoning), "
            "cached, reasoning.", "provider", "model", "type")
COST = _c("llm_proxy_cost_usd_total", "Cost of the calls in USD, from the genai-prices table.", "provider", "model")
UNPRICED = _c("llm_proxy_unpriced_calls_total", "Calls with usage whose model has no price.", "provider", "model")
AUTH_REJECTIONS = _c("llm_proxy_auth_rejections_total", "Calls refused with 401/403 by the proxy.", "reason")
RATE_LIMITED = _c("llm_proxy_rate_limit_rejections_total", "Calls refused with 429 by the proxy.", "reason")
BUS_PUBLISHED = _c("llm_proxy_events_published_total", "Events handed to the event bus.")
BUS_DROPPED = _c("llm_proxy_events_dropped_total", "Events lost because every queue and the spool were full.")
BUS_SPOOLED = _c("llm_proxy_events_spooled_total", "Events written to the disk spool while Redis was away.")
BUS_DEPTH = _g("llm_proxy_event_queue_depth", "Events waiting in the bus's in-process queues.")
TRACE_QUEUED = _g("llm_proxy_trace_calls_queued", "Traced calls waiting in the workers to be handed to span export.")
TRACE_DROPPED = _c("llm_proxy_trace_calls_dropped_total", "Traced calls whose spans were dropped in the workers: "
                   "the export queue was full, or the exporter process was backed up or not running.")
UPTIME = _g("llm_proxy_uptime_seconds", "Seconds since the oldest live worker started.", live="max")
WORKERS = _g("llm_proxy_workers", "Live worker processes.")
START_TIME = _g("llm_proxy_process_start_time_seconds", "Start time of the oldest live worker (Unix seconds).",
                live="min")
RESIDENT = _g("llm_proxy_process_resident_memory_bytes", "Resident memory of all live workers.")
VIRTUAL = _g("llm_proxy_process_virtual_memory_bytes", "Virtual memory of all live workers.")
CPU = _c("llm_proxy_process_cpu_seconds_total", "User and system CPU time of the workers.")
OPEN_FDS = _g("llm_proxy_process_open_fds", "Open file descriptors of all live workers.")
THREADS = _g("llm_proxy_python_threads", "Python threads of all live workers.")
TASKS = _g("llm_proxy_asyncio_tasks", "asyncio tasks of all live workers (in-flight requests and more).")
GC_COLLECTIONS = _c("llm_proxy_python_gc_collections_total", "Garbage collector runs.", "generation")
GC_COLLECTED = _c("llm_proxy_python_gc_objects_collected_total", "Objects freed by the garbage collector.",
                  "generation")
LOOP_LAG = _h("llm_proxy_event_loop_lag_seconds", f"How late each worker's event loop ran a timer due every "
              f"{LAG_INTERVAL:g} s: the time other work held the loop (a stall delays every call in flight).",
              LAG_BUCKETS)
PYTHON_INFO = _g("llm_proxy_python_info", "Python of the workers (always 1).", "implementation", "version",
                 live="max")

INSTRUMENTS: tuple[Instrument, ...] = (
    UPTIME, REQUESTS, ERRORS, CACHE_HITS, CACHE_MISSES, CACHE_BYPASS, CACHE_STORES, CACHE_EVICTIONS,
    REQUEST_DURATION, UPSTREAM_DURATION, OVERHEAD, TTFT, TOKENS, COST, UNPRICED, AUTH_REJECTIONS, RATE_LIMITED,
    BUS_PUBLISHED, BUS_DROPPED, BUS_SPOOLED, BUS_DEPTH, TRACE_QUEUED, TRACE_DROPPED, WORKERS, START_TIME, RESIDENT,
    VIRTUAL, CPU, OPEN_FDS, THREADS, TASKS, GC_COLLECTIONS, GC_COLLECTED, LOOP_LAG, PYTHON_INFO,
)
TOKEN_TYPES = ("input", "output", "cached", "reasoning")


def observe(values: memoryview[float], first: int, buckets: tuple[float, ...], amount: float) -> None:
    """Histogram slots: one per bucket (not cumulative) and +Inf, then the sum."""
    values[first + bisect_left(buckets, amount)] += 1.0
    values[first + len(buckets) + 1] += amount


@dataclass(frozen=True, slots=True)
class _CallSeries:
    """The slots one (provider, model, status, project) combination writes to."""

    requests: int
    duration: int
    upstream: int
    overhead: int
    ttft: int
    tokens: tuple[int, int, int, int]
    cost: int
    unpriced: int


class RequestMetrics:
    """Telemetry handler: one `proxy.request.stop` → a handful of slot increments."""

    def __init__(self, store: ValueStore, *, project_labels: bool, max_model_labels: int) -> None:
        self.store = store
        self.project_labels = project_labels
        self.max_model_labels = max_model_labels
        self._models: dict[str, str] = {}
        self._calls: dict[tuple[Any, ...], _CallSeries] = {}
        self._single: dict[tuple[str, tuple[str, ...]], int] = {}

    def attach(self, telemetry: Telemetry, handler_id: str) -> None:
        telemetry.attach_many(f"{handler_id}.request", ("llm_proxy.proxy.request.stop",
                              "llm_proxy.proxy.request.exception"), self.on_request_stop)
        telemetry.attach(f"{handler_id}.evicted", "llm_proxy.cache.evicted", self.on_evicted)

    def on_request_stop(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        status: int = md["status"]
        key = (md["provider"], md["model"], status, md["project_id"] if self.project_labels else None)
        calls = self._calls.get(key) or self._new_calls(key)
        values = self.store.values
        values[calls.requests] += 1.0
        observe(values, calls.duration, DURATION_BUCKETS, m["duration"])
        if m["upstream_duration"] is not None:
            observe(values, calls.upstream, DURATION_BUCKETS, m["upstream_duration"])
            observe(values, calls.overhead, OVERHEAD_BUCKETS, max(m["overhead"], 0.0))
        if md["stream"] and m["time_to_first_byte"] is not None:
            observe(values, calls.ttft, DURATION_BUCKETS, m["time_to_first_byte"])
        if md["usage_known"]:
            self._tokens(values, calls, m)
        if status >= 400:
            self._error(values, md, status)
        cache_status = md["cache_status"]
        if cache_status is not None:
            self._cache(values, cache_status)

    def on_evicted(self, name: str, m: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        self.store.values[self._slot(CACHE_EVICTIONS, ())] += float(m.get("count", 1))

    def _tokens(self, values: memoryview[float], calls: _CallSeries, m: Mapping[str, Any]) -> None:
        slots = calls.tokens
        values[slots[0]] += m["input_tokens"]
        values[slots[1]] += m["output_tokens"]
        values[slots[2]] += m["cached_tokens"]
        values[slots[3]] += m["reasoning_tokens"]
        cost = m["cost_usd"]
        if cost is None:
            values[calls.unpriced] += 1.0
        else:
            values[calls.cost] += cost

    def _error(self, values: memoryview[float], md: Mapping[str, Any], status: int) -> None:
        reason: str = md["error_code"] or "upstream"
        values[self._slot(ERRORS, (md["provider"], str(status), reason))] += 1.0
        if md["error_code"] is None or md["upstream_error"]:
            return
        if status in (401, 403):
            values[self._slot(AUTH_REJECTIONS, (reason,))] += 1.0
        elif status == 429:
            values[self._slot(RATE_LIMITED, (reason,))] += 1.0

    def _cache(self, values: memoryview[float], cache_status: str) -> None:
        if cache_status in ("hit", "conditional-hit"):
            values[self._slot(CACHE_HITS, ())] += 1.0
        elif cache_status in ("miss", "stored"):
            values[self._slot(CACHE_MISSES, ())] += 1.0
            if cache_status == "stored":
                values[self._slot(CACHE_STORES, ())] += 1.0
        elif cache_status == "bypass":
            values[self._slot(CACHE_BYPASS, ())] += 1.0

    def _slot(self, instrument: Instrument, labels: tuple[str, ...]) -> int:
        key = (instrument.name, labels)
        found = self._single.get(key)
        if found is None:
            found = self._single[key] = self.store.slot(instrument.name, labels, instrument.width)
        return found

    def _new_calls(self, key: tuple[Any, ...]) -> _CallSeries:
        provider, model, status, project = key
        label = self._model_label(model)
        extra = () if project is None else (project,)
        slot = self.store.slot
        series = _CallSeries(
            requests=slot(REQUESTS.name, (provider, label, str(status), *extra)),
            duration=slot(REQUEST_DURATION.name, (provider, label), REQUEST_DURATION.width),
            upstream=slot(UPSTREAM_DURATION.name, (provider, label), UPSTREAM_DURATION.width),
            overhead=slot(OVERHEAD.name, (provider,), OVERHEAD.width),
            ttft=slot(TTFT.name, (provider, label), TTFT.width),
            tokens=tuple(slot(TOKENS.name, (provider, label, kind, *extra)) for kind in TOKEN_TYPES),  # type: ignore[arg-type]
            cost=slot(COST.name, (provider, label, *extra)),
            unpriced=slot(UNPRICED.name, (provider, label)),
        )
        self._calls[key] = series
        return series

    def _model_label(self, model: str | None) -> str:
        if not model:
            return "unknown"
        label = self._models.get(model)
        if label is None:
            label = model if len(self._models) < self.max_model_labels else "other"
            if label != "other":
                self._models[model] = label
        return label


BusStatsSource = Callable[[], Any]
TraceStatsSource = Callable[[], tuple[int, int]]
"""Traced calls queued in this worker and dropped since it started (`Tracing.stats`)."""


class RuntimeMetrics:
    """Copies pull-style readings (bus counters, process, runtime) into the worker's slots.

    It also emits `llm_proxy.bus.published/dropped/spooled` with `{count}` = the increase since
    the previous refresh, so those events arrive at most once per refresh interval, batched.
    """

    def __init__(self, store: ValueStore, telemetry: Telemetry, bus_stats: BusStatsSource | None) -> None:
        self.store = store
        self.telemetry = telemetry
        self.bus_stats = bus_stats
        self.trace_stats: TraceStatsSource | None = None
        """Set once tracing is built (it is built after the metrics)."""
        self.started = time.time()
        slot = store.slot
        self._slots = {i.name: slot(i.name, (), i.width) for i in (
            BUS_PUBLISHED, BUS_DROPPED, BUS_SPOOLED, BUS_DEPTH, TRACE_QUEUED, TRACE_DROPPED, UPTIME, WORKERS,
            START_TIME, RESIDENT, VIRTUAL, CPU, OPEN_FDS, THREADS, TASKS)}
        self._gc = [(slot(GC_COLLECTIONS.name, (str(g),)), slot(GC_COLLECTED.name, (str(g),))) for g in range(3)]
        info = slot(PYTHON_INFO.name, (platform.python_implementation(), platform.python_version()))
        store.values[info] = 1.0
        store.values[self._slots[START_TIME.name]] = self.started
        store.values[self._slots[WORKERS.name]] = 1.0
        self._bus_seen = {"published": 0, "dropped": 0, "spooled": 0}
        self._lag = slot(LOOP_LAG.name, (), LOOP_LAG.width)

    def observe_lag(self, seconds: float) -> None:
        observe(self.store.values, self._lag, LAG_BUCKETS, max(seconds, 0.0))

    def refresh(self) -> None:
        values, slots = self.store.values, self._slots
        values[slots[UPTIME.name]] = time.time() - self.started
        reading = read_runtime()
        values[slots[RESIDENT.name]] = reading.resident_memory_bytes
        values[slots[VIRTUAL.name]] = reading.virtual_memory_bytes
        values[slots[CPU.name]] = reading.cpu_seconds
        values[slots[OPEN_FDS.name]] = reading.open_fds
        values[slots[THREADS.name]] = reading.threads
        values[slots[TASKS.name]] = reading.asyncio_tasks
        for (collections, collected), runs, freed in zip(self._gc, reading.gc_collections, reading.gc_collected,
                                                           strict=False):
            values[collections], values[collected] = runs, freed
        if self.bus_stats is not None:
            self._refresh_bus(values, slots)
        if self.trace_stats is not None:
            queued, dropped = self.trace_stats()
            values[slots[TRACE_QUEUED.name]] = float(queued)
            values[slots[TRACE_DROPPED.name]] = float(dropped)

    def _refresh_bus(self, values: memoryview[float], slots: dict[str, int]) -> None:
        stats = self.bus_stats() if self.bus_stats else None
        if stats is None:
            return
        values[slots[BUS_DEPTH.name]] = float(stats.queue_depth)
        for kind, instrument in (("published", BUS_PUBLISHED), ("dropped", BUS_DROPPED), ("spooled", BUS_SPOOLED)):
            total = int(getattr(stats, kind))
            values[slots[instrument.name]] = float(total)
            increase = total - self._bus_seen[kind]
            if increase > 0:
                self._bus_seen[kind] = total
                self.telemetry.execute(f"llm_proxy.bus.{kind}", {"count": increase, "total": total},
                                       {"backend": stats.backend})
