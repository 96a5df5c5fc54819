"""Opens and closes the shared resources of one worker process, in dependency order.

One small builder per concern; `Services.open` runs them in the ASGI lifespan start-up and
`Services.aclose` undoes them in reverse: stop taking work, flush what is buffered (usage
counters, audit lines, events), then close connections.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from llm_proxy.audit.recorder import AuditRecorder
from llm_proxy.bus import EventBus, build_bus
from llm_proxy.bus.file_log import FileEventLog
from llm_proxy.cache import build_cache
from llm_proxy.clock import Clock, SystemClock
from llm_proxy.proxy.breaker import CircuitBreaker
from llm_proxy.proxy.caching import ResponseCaching
from llm_proxy.proxy.endpoint import ProxyEndpoint, ProxyOptions
from llm_proxy.proxy.http1 import Http1Upstream
from llm_proxy.proxy.providers import ProviderConfig, load_providers
from llm_proxy.proxy.upstream import AiohttpUpstream, Upstream
from llm_proxy.proxy.validation import RequestValidator
from llm_proxy.settings import Settings
from llm_proxy.storage import Storage
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import open_storage
from llm_proxy.storage.usage import UsageCounter
from llm_proxy.telemetry import Telemetry
from llm_proxy.telemetry import default as default_telemetry
from llm_proxy.telemetry.collector import MetricsCollector
from llm_proxy.telemetry.cost import PriceTable
from llm_proxy.telemetry.events import install_handlers
from llm_proxy.telemetry.tracing import Tracing, build_tracing
from llm_proxy.tokens.authenticator import Authenticator
from llm_proxy.tokens.budget import BudgetGuard
from llm_proxy.tokens.spend import SpendLedger

log = logging.getLogger("llm_proxy.services")


@dataclass
class Services:
    settings: Settings
    clock: Clock
    providers: ProviderConfig
    storage: Storage
    usage: UsageCounter
    audit: AuditRecorder
    authenticator: Authenticator
    bus: EventBus
    proxy: ProxyEndpoint
    stack: AsyncExitStack
    telemetry: Telemetry = field(default_factory=Telemetry)
    prices: PriceTable | None = None
    metrics: MetricsCollector | None = None
    tracing: Tracing | None = None
    caching: ResponseCaching | None = None
    budget: BudgetGuard | None = None

    @classmethod
    async def open(cls, settings: Settings, *, clock: Clock | None = None,
                   telemetry: Telemetry | None = None) -> Services:
        clock = clock or SystemClock()
        telemetry = telemetry if telemetry is not None else default_telemetry
        providers = load_providers(settings.server, settings.environment)
        stack = AsyncExitStack()
        try:
            storage = await open_storage(settings.storage, KeyCipher(settings.security.encryption_key),
                                         migrate=settings.storage.auto_migrate)
            stack.push_async_callback(storage.aclose)
            usage = _build_usage(settings, storage)
            usage.start()
            stack.push_async_callback(usage.aclose)
            audit = AuditRecorder(settings.audit, storage.audit if settings.audit.store_in_db else None,
                                  clock, logging.getLogger("llm_proxy.audit"))
            await audit.start()
            stack.push_async_callback(audit.aclose)
            bus = build_bus(settings.observability, settings.redis, logging.getLogger("llm_proxy.bus"))
            await bus.start()
            await _start_file_event_log(settings, bus, stack)
            stack.push_async_callback(bus.aclose)
            authenticator = _build_authenticator(settings, storage, usage, clock)
            prices, metrics, tracing = await _build_telemetry(settings, telemetry, bus, providers, stack)
            caching = _build_caching(settings, authenticator, telemetry, stack)
            budget = _build_budget(settings, storage, audit, telemetry, clock, stack)
            if budget is not None:
                await budget.ledger.start()
            proxy = await _build_proxy(settings, providers, authenticator, audit, stack, telemetry, tracing,
                                       caching, budget=budget, prices=prices)
        except BaseException:
            await stack.aclose()
            raise
        log.info("services ready", extra={"provider": providers.default, "upstream": providers.active.base_url,
                                          "providers_source": providers.source,
                                          "db_driver": settings.storage.db_driver})
        return cls(settings, clock, providers, storage, usage, audit, authenticator, bus, proxy, stack,
                   telemetry=telemetry, prices=prices, metrics=metrics, tracing=tracing, caching=caching,
                   budget=budget)

    async def aclose(self) -> None:
        await self.stack.aclose()


async def _start_file_event_log(settings: Settings, bus: EventBus, stack: AsyncExitStack) -> None:
    """`--file-event-log`: an in-process tap, so it never takes events from the dispatchers.

    Registered before the bus's own close, so on shutdown the bus flushes first and the log
    then writes what it still holds.
    """
    path = settings.observability.file_event_log
    if not path:
        return
    file_log = FileEventLog.attach(bus, path, logging.getLogger("llm_proxy.file_event_log"))
    await file_log.start()
    stack.push_async_callback(file_log.aclose)


def _build_usage(settings: Settings, storage: Storage) -> UsageCounter:
    return UsageCounter(storage.tokens, max_pending=settings.usage.buffer_size,
                        flush_interval=settings.usage.flush_interval,
                        logger=logging.getLogger("llm_proxy.usage"))


def _build_authenticator(settings: Settings, storage: Storage, usage: UsageCounter, clock: Clock) -> Authenticator:
    server = settings.server
    return Authenticator(storage, usage, clock, ttl=server.token_cache_ttl, max_entries=server.token_cache_max,
                         enforce_project_active=server.enforce_project_active,
                         key_ttl=server.api_key_cache_ttl, key_max=server.api_key_cache_max)


async def _build_telemetry(settings: Settings, telemetry: Telemetry, bus: EventBus, providers: ProviderConfig,
                           stack: AsyncExitStack) -> tuple[PriceTable, MetricsCollector | None, Tracing | None]:
    """Price table, metrics and tracing; each of the last two is None (absent) when turned off."""
    install_handlers(telemetry, settings.metrics.handlers)
    prices = PriceTable()
    await asyncio.to_thread(prices.preload)
    metrics = None
    if settings.metrics.enabled:
        metrics = MetricsCollector(settings.metrics, telemetry, workers=settings.server.workers,
                                   bus_stats=bus.stats)
        metrics.start()
        stack.push_async_callback(metrics.aclose)
    tracing = build_tracing(settings.tracing, providers.active.base_url, log_settings=settings.log)
    if tracing is not None:
        tracing.attach(telemetry)
        stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
        stack.callback(tracing.detach, telemetry)
        if metrics is not None:
            metrics.runtime.trace_stats = tracing.stats
    return prices, metrics, tracing



def _build_caching(settings: Settings, authenticator: Authenticator, telemetry: Telemetry,
                   stack: AsyncExitStack) -> ResponseCaching | None:
    """None when HTTP_CACHE_ENABLED=false, so the proxy does no cache work at all."""
    if not settings.cache.enabled:
        return None
    cache = build_cache(settings.cache, settings.redis, observer=telemetry.execute,
                        logger=logging.getLogger("llm_proxy.cache"))
    stack.push_async_callback(cache.aclose)
    return ResponseCaching(cache, settings.cache, authenticator=authenticator, observer=telemetry.execute)


def _build_budget(settings: Settings, storage: Storage, audit: AuditRecorder, telemetry: Telemetry, clock: Clock,
                  stack: AsyncExitStack) -> BudgetGuard | None:
    """None when SPEND_TRACKING=false: no spend is counted and budgets and alerts are not applied."""
    if not settings.spend.enabled:
        return None
    ledger = SpendLedger(storage.spend, clock, flush_interval=settings.spend.flush_interval, telemetry=telemetry,
                         audit=audit, logger=logging.getLogger("llm_proxy.spend"))
    stack.push_async_callback(ledger.aclose)
    return BudgetGuard(ledger)


async def _build_proxy(  # noqa: PLR0913 - one argument per service the endpoint is built from
        settings: Settings, providers: ProviderConfig, authenticator: Authenticator, audit: AuditRecorder,
        stack: AsyncExitStack, telemetry: Telemetry, tracing: Tracing | None, caching: ResponseCaching | None, *,
        budget: BudgetGuard | None = None, prices: PriceTable | None = None) -> ProxyEndpoint:
    provider = providers.active
    upstream: Upstream = (Http1Upstream(provider) if settings.server.upstream_client == "native"
                          else AiohttpUpstream(provider))
    stack.push_async_callback(upstream.aclose)
    return ProxyEndpoint(
        provider=provider,
        validator=RequestValidator(provider),
        authenticator=authenticator,
        upstream=upstream,
        breaker=CircuitBreaker(provider.name, threshold=settings.server.breaker_threshold,
                               cooldown=settings.server.breaker_cooldown),
        audit=audit,
        options=ProxyOptions(max_request_size=settings.server.max_request_size,
                             trust_proxy_headers=settings.server.trusted_proxy_headers, telemetry=telemetry,
                             trace_headers=tracing.propagation_headers if tracing is not None else None,
                             caching=caching, budget=budget, prices=prices),
    )
