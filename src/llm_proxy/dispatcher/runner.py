"""Composition root of a dispatcher process: settings → bus subscription, sink, transformer, health.

Consumer groups: by default each service has its own group, `llm-proxy-dispatchers-<service>`,
so different services each receive every event (fan-out) while instances of one service share
the work; `REDIS_CONSUMER_GROUP` overrides. The consumer name defaults to
`dispatcher-<service>-<host>-<pid>`.

Telemetry: the dispatcher emits on the process-wide registry (`llm_proxy.telemetry.default`) unless
given one, after running the `TELEMETRY_HANDLERS` entries against it, as the proxy server does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass

from llm_proxy.bus import DEFAULT_GROUP, EventBus, Subscription, build_bus
from llm_proxy.dispatcher.backoff import BackoffPolicy
from llm_proxy.dispatcher.delivery import RetryingSink, SplittingSink
from llm_proxy.dispatcher.health import BusStatsProbe, HealthServer, RedisLagProbe
from llm_proxy.dispatcher.service import Dispatcher
from llm_proxy.dispatcher.sinks import Sink, build_sink
from llm_proxy.dispatcher.transform import Transformer
from llm_proxy.errors import ConfigError
from llm_proxy.settings import Settings
from llm_proxy.telemetry import Telemetry
from llm_proxy.telemetry import default as default_telemetry
from llm_proxy.telemetry.events import install_handlers


def consumer_group(settings: Settings, service: str) -> str:
    return settings.redis.consumer_group or f"{DEFAULT_GROUP}-{service}"


def consumer_name(settings: Settings, service: str) -> str:
    return settings.redis.consumer_name or f"dispatcher-{service}-{socket.gethostname()}-{os.getpid()}"


def delivery_sink(sink: Sink, settings: Settings, stopping: asyncio.Event | None = None) -> Sink:
    section = settings.dispatcher
    policy = BackoffPolicy(section.backoff_base, section.backoff_max, section.max_retries)
    return RetryingSink(SplittingSink(sink, section.batch_size), policy, stopping=stopping)


@dataclass
class DispatcherProcess:
    dispatcher: Dispatcher
    bus: EventBus
    subscription: Subscription
    health: HealthServer | None = None
    health_address: tuple[str, int] | None = None


def build_bus_for_dispatcher(settings: Settings, logger: logging.Logger, *, bus: EventBus | None = None) -> EventBus:
    if bus is not None:
        return bus
    if settings.observability.event_bus in ("in-memory", "memory"):
        raise ConfigError(["LLM_PROXY_EVENT_BUS: the dispatcher reads redis-streams; the in-memory bus lives "
                           "inside the proxy process (use FILE_EVENT_LOG and `dispatcher replay` there)"])
    return build_bus(settings.observability, settings.redis, logger)


async def serve(settings: Settings, stop: asyncio.Event, *, logger: logging.Logger | None = None,
                bus: EventBus | None = None, sink: Sink | None = None,
                started: asyncio.Future[DispatcherProcess] | None = None,
                telemetry: Telemetry | None = None) -> DispatcherProcess:
    """Run one dispatcher until `stop` is set, then drain and close everything it opened."""
    logger = logger or logging.getLogger("llm_proxy.dispatcher")
    telemetry = telemetry if telemetry is not None else default_telemetry
    install_handlers(telemetry, settings.metrics.handlers)
    service = settings.dispatcher.service
    sink = sink or build_sink(service, settings)
    bus = build_bus_for_dispatcher(settings, logger, bus=bus)
    group = consumer_group(settings, service)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(sink.aclose)
        subscription = bus.subscribe(consumer_name(settings, service), group=group)
        stack.push_async_callback(subscription.aclose)
        dispatcher = Dispatcher(subscription, sink, Transformer(verbose=settings.dispatcher.verbose),
                                settings.dispatcher, service=service, logger=logger,
                                claim_time=settings.redis.claim_time, telemetry=telemetry)
        process = DispatcherProcess(dispatcher, bus, subscription)
        if settings.dispatcher.health_addr:
            probe = (BusStatsProbe(bus, group) if bus.stats().backend != "redis-streams"
                     else RedisLagProbe(settings.redis, group))
            stack.push_async_callback(probe.aclose)
            process.health = HealthServer(dispatcher, probe, max_lag=settings.dispatcher.max_lag, logger=logger)
            stack.push_async_callback(process.health.aclose)
            process.health_address = await process.health.start(settings.dispatcher.health_addr)
        logger.info("dispatcher %s: consumer group %r, consumer %r", service, group,
                    consumer_name(settings, service))
        if started is not None:
            started.set_result(process)
        await dispatcher.run_until_stopped(stop)
        return process


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
