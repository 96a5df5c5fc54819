"""The dispatcher's `/health` (JSON) and `/metrics` (Prometheus text) on `--health-addr`.

Health is "unhealthy" (HTTP 503) when the bus cannot be read, when more than `max_lag` events
wait for this consumer group, or when events wait and nothing was delivered for `stale_after`
seconds although something was received before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_proxy.bus import EventBus
from llm_proxy.dispatcher.service import Dispatcher
from llm_proxy.settings import RedisSettings, split_listen_addr


@dataclass(frozen=True, slots=True)
class Lag:
    lag: int | None = None
    """Events of the stream the group has not read yet."""
    pending: int | None = None
    """Events read by the group's consumers and not yet acknowledged."""
    stream_length: int | None = None
    error: str | None = None

    @property
    def waiting(self) -> int:
        return (self.lag or 0) + (self.pending or 0)


class LagProbe(Protocol):
    async def __call__(self) -> Lag: ...


class RedisLagProbe:
    def __init__(self, settings: RedisSettings, group: str) -> None:
        self.stream = settings.stream_key
        self.group = group
        self.client = Redis.from_url(settings.connection_url(), socket_connect_timeout=2.0, socket_timeout=2.0)

    async def __call__(self) -> Lag:
        try:
            length = await self.client.xlen(self.stream)
            groups = await self.client.xinfo_groups(self.stream) if length else []
        except RedisError as exc:
            if "no such key" in str(exc).lower():
                return Lag(0, 0, 0)
            return Lag(error=f"redis: {exc}")
        for group in groups:
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                return Lag(_int(group.get("lag")), _int(group.get("pending")), length)
        return Lag(length, 0, length)

    async def aclose(self) -> None:
        await self.client.aclose()


class BusStatsProbe:
    """For the in-memory bus: the group's queue depth and pending count."""

    def __init__(self, bus: EventBus, group: str) -> None:
        self.bus = bus
        self.group = group

    async def __call__(self) -> Lag:
        for group in self.bus.stats().groups:
            if group.group == self.group:
                return Lag(group.depth, group.pending, None)
        return Lag(0, 0, None)

    async def aclose(self) -> None:
        return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | str | bytes) and str(value).lstrip("-").isdigit() else None


class HealthServer:
    def __init__(self, dispatcher: Dispatcher, probe: LagProbe, *, max_lag: int = 10000,
                 stale_after: float = 300.0, logger: logging.Logger | None = None) -> None:
        self.dispatcher = dispatcher
        self.probe = probe
        self.max_lag = max_lag
        self.stale_after = stale_after
        self.logger = logger or logging.getLogger("llm_proxy.dispatcher")
        self.last_lag = Lag()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StatsCollector(self))
        self._runner: web.AppRunner | None = None

    async def report(self) -> dict[str, Any]:
        self.last_lag = lag = await self.probe()
        stats = self.dispatcher.stats
        problem = self._problem(lag)
        return {
            "healthy": problem is None, "status": "healthy" if problem is None else "unhealthy",
            "message": problem, "service": self.dispatcher.service,
            "lag": lag.lag, "pending": lag.pending, "stream_length": lag.stream_length,
            **{key: value for key, value in asdict(stats).items() if not key.startswith("last_")},
            "last_delivery_at": _iso(stats.last_delivery_at), "last_received_at": _iso(stats.last_received_at),
            "last_error": stats.last_error,
        }

    def _problem(self, lag: Lag) -> str | None:
        if lag.error:
            return f"event bus unreadable: {lag.error}"
        if lag.waiting > self.max_lag:
            return f"high lag: {lag.waiting} events waiting (limit {self.max_lag})"
        last = self.dispatcher.stats.last_delivery_at or self.dispatcher.stats.last_received_at
        if last is not None and lag.waiting and (datetime.now(UTC) - last).total_seconds() > self.stale_after:
            return f"stalled: {lag.waiting} events waiting and nothing delivered since {_iso(last)}"
        return None

    async def _health(self, _: web.Request) -> web.Response:
        report = await self.report()
        return web.Response(body=orjson.dumps(report), status=200 if report["healthy"] else 503,
                            content_type="application/json")

    async def _metrics(self, _: web.Request) -> web.Response:
        self.last_lag = await self.probe()
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def start(self, addr: str) -> tuple[str, int]:
        """Serve on `addr` (host:port, port 0 picks one); returns the bound address."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_listen_addr(addr)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.logger.info("dispatcher health on http://%s:%s/health", bound[0], bound[1])
        return str(bound[0]), int(bound[1])

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _StatsCollector(Collector):
    def __init__(self, server: HealthServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        dispatcher = self.server.dispatcher
        stats, service = dispatcher.stats, dispatcher.service
        events = CounterMetricFamily("llm_proxy_dispatcher_events", "Events by outcome.",
                                     labels=["service", "outcome"])
        for outcome in ("received", "delivered", "dead_lettered", "retried", "left_pending", "transform_failed"):
            events.add_metric([service, outcome], getattr(stats, outcome))
        yield events
        failures = CounterMetricFamily("llm_proxy_dispatcher_sink_failures", "Failed records by error kind.",
                                       labels=["service", "error"])
        for error, count in stats.errors.items():
            failures.add_metric([service, error], count)
        yield failures
        batches = CounterMetricFamily("llm_proxy_dispatcher_batches", "Batches sent to the sink.",
                                      labels=["service"])
        batches.add_metric([service], stats.batches)
        yield batches
        lag = self.server.last_lag
        for name, value, doc in (("lag", lag.lag, "Events the group has not read yet."),
                                 ("pending", lag.pending, "Events read and not yet acknowledged."),
                                 ("stream_length", lag.stream_length, "Length of the event stream.")):
            if value is not None:
                yield _gauge(name, doc, service, value)
        if stats.last_delivery_at is not None:
            yield _gauge("last_delivery_timestamp_seconds", "When the sink last confirmed a batch.", service,
                         stats.last_delivery_at.timestamp())


def _gauge(name: str, doc: str, service: str, value: float) -> Metric:
    family = GaugeMetricFamily(f"llm_proxy_dispatcher_{name}", doc, labels=["service"])
    family.add_metric([service], value)
    return family


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
