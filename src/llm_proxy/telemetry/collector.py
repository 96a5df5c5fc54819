"""MetricsCollector: one worker's metrics, from start-up to shutdown.

It picks where the values live (memory with one worker, the shared directory with several),
attaches the recording handlers, refreshes the pull-style readings once a second, and answers
`collect()` for the endpoints with every worker's values added up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from llm_proxy.settings import MetricsSettings
from llm_proxy.telemetry.events import Telemetry
from llm_proxy.telemetry.exposition import MetricsEndpoints, Totals, aggregate
from llm_proxy.telemetry.metrics import LAG_INTERVAL, BusStatsSource, RequestMetrics, RuntimeMetrics
from llm_proxy.telemetry.store import ValueStore, default_directory, master_identity, read_store, remove_stale

log = logging.getLogger("llm_proxy.metrics")

REFRESH_INTERVAL = 1.0


class MetricsCollector:
    def __init__(self, settings: MetricsSettings, telemetry: Telemetry, *, workers: int,
                 bus_stats: BusStatsSource | None = None) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.store = _open_store(settings, workers)
        self.requests = RequestMetrics(self.store, project_labels=settings.project_labels,
                                       max_model_labels=settings.max_model_labels)
        self.runtime = RuntimeMetrics(self.store, telemetry, bus_stats)
        self._handler_id = f"llm_proxy.metrics.{id(self):x}"
        self._task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.requests.attach(self.telemetry, self._handler_id)
        self.runtime.refresh()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._refresh_loop(), name="metrics-refresh")
        self._lag_task = loop.create_task(_lag_probe(self.runtime.observe_lag), name="metrics-loop-lag")

    def collect(self) -> Totals:
        self.runtime.refresh()
        return aggregate(read_store(self.store))

    def endpoints(self) -> MetricsEndpoints:
        return MetricsEndpoints(self.settings.path, self.settings.token, self.collect, self.settings.project_labels)

    async def aclose(self) -> None:
        for task in (self._task, self._lag_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.telemetry.detach(f"{self._handler_id}.request")
        self.telemetry.detach(f"{self._handler_id}.evicted")
        self.runtime.refresh()
        self.store.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                self.runtime.refresh()
            except Exception:  # a failed reading must not stop the next ones
                log.exception("could not refresh the runtime metrics")


async def _lag_probe(observe_lag: Callable[[float], None]) -> None:
    """Sleep `LAG_INTERVAL` again and again; how much later than asked each wake-up came is the lag."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + LAG_INTERVAL
        await asyncio.sleep(LAG_INTERVAL)
        observe_lag(loop.time() - asked)


def _open_store(settings: MetricsSettings, workers: int) -> ValueStore:
    if workers <= 1 and not settings.multiprocess_dir:
        return ValueStore()
    directory = Path(settings.multiprocess_dir) if settings.multiprocess_dir else default_directory()
    master = master_identity()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove_stale(directory, master)
    return ValueStore(directory, master)
