"""/health and /metrics of a running dispatcher."""

from __future__ import annotations

import asyncio

import aiohttp

from llm_proxy.bus.memory import MemoryBus
from llm_proxy.dispatcher.health import BusStatsProbe, HealthServer, Lag, RedisLagProbe
from llm_proxy.dispatcher.service import Dispatcher
from llm_proxy.dispatcher.sinks.memory import InMemorySink
from llm_proxy.dispatcher.transform import Transformer
from tests.dispatcher.conftest import chat_event, settings_with


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


class TestHealthServer:
    async def test_reports_counters_lag_and_prometheus_metrics(self, transformer: Transformer) -> None:
        bus = MemoryBus()
        sink = InMemorySink()
        settings = settings_with(DISPATCHER_FLUSH_INTERVAL="0.05").dispatcher
        dispatcher = Dispatcher(bus.subscribe("d", group="g"), sink, transformer, settings, service="file")
        health = HealthServer(dispatcher, BusStatsProbe(bus, "g"), max_lag=100)
        host, port = await health.start("127.0.0.1:0")
        for i in range(3):
            bus.publish(chat_event(i))
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run_until_stopped(stop))
        await sink.wait_for(3)
        status, body = await fetch(f"http://{host}:{port}/health")
        assert status == 200
        assert '"healthy":true' in body
        assert '"delivered":3' in body
        assert '"lag":0' in body
        status, metrics = await fetch(f"http://{host}:{port}/metrics")
        assert status == 200
        assert 'llm_proxy_dispatcher_events_total{outcome="delivered",service="file"} 3.0' in metrics
        assert 'llm_proxy_dispatcher_lag{service="file"} 0.0' in metrics
        stop.set()
        await task
        await health.aclose()

    async def test_high_lag_is_unhealthy(self, transformer: Transformer) -> None:
        bus = MemoryBus()
        dispatcher = Dispatcher(bus.subscribe("d", group="g"), InMemorySink(), transformer, settings_with().dispatcher)
        for i in range(5):
            bus.publish(chat_event(i))
        health = HealthServer(dispatcher, BusStatsProbe(bus, "g"), max_lag=4)
        report = await health.report()
        assert not report["healthy"]
        assert report["message"].startswith("high lag: 5 events waiting")

    async def test_an_unreadable_bus_is_unhealthy(self, transformer: Transformer) -> None:
        async def broken() -> Lag:
            return Lag(error="connection refused")

        dispatcher = Dispatcher(MemoryBus().subscribe("d"), InMemorySink(), transformer, settings_with().dispatcher)
        report = await HealthServer(dispatcher, broken).report()
        assert report["status"] == "unhealthy"
        assert "connection refused" in report["message"]

    async def test_redis_probe_reads_lag_and_pending(self, redis_env: dict[str, str]) -> None:
        from redis.asyncio import Redis

        settings = settings_with(**redis_env).redis
        client = Redis.from_url(settings.connection_url())
        for i in range(4):
            await client.xadd(settings.stream_key, {"data": str(i)})
        await client.xgroup_create(settings.stream_key, "g", id="0")
        await client.xreadgroup("g", "c", {settings.stream_key: ">"}, count=1)
        await client.aclose()
        probe = RedisLagProbe(settings, "g")
        assert await probe() == Lag(lag=3, pending=1, stream_length=4)
        await probe.aclose()
