"""Opens and closes the shared resources of one worker process, in dependency order.

One small builder per concern; `Services.open` runs them in the ASGI lifespan start-up and
`Services.aclose` undoes them in reverse: stop taking work, flush what is buffered (usage
counters, audit lines, events), then close connections.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

from llm_proxy.audit.recorder import AuditRecorder
from llm_proxy.bus import EventBus, build_bus
from llm_proxy.bus.file_log import FileEventLog
from llm_proxy.clock import Clock, SystemClock
from llm_proxy.proxy.breaker import CircuitBreaker
from llm_proxy.proxy.endpoint import ProxyEndpoint, ProxyOptions
from llm_proxy.proxy.providers import ProviderConfig, load_providers
from llm_proxy.proxy.upstream import AiohttpUpstream
from llm_proxy.proxy.validation import RequestValidator
from llm_proxy.settings import Settings
from llm_proxy.storage import Storage
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import open_storage
from llm_proxy.storage.usage import UsageCounter
from llm_proxy.tokens.authenticator import Authenticator

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

    @classmethod
    async def open(cls, settings: Settings, *, clock: Clock | None = None) -> Services:
        clock = clock or SystemClock()
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
            proxy = await _build_proxy(settings, providers, authenticator, audit, stack)
        except BaseException:
            await stack.aclose()
            raise
        log.info("services ready", extra={"provider": providers.default, "upstream": providers.active.base_url,
                                          "providers_source": providers.source,
                                          "db_driver": settings.storage.db_driver})
        return cls(settings, clock, providers, storage, usage, audit, authenticator, bus, proxy, stack)

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


async def _build_proxy(settings: Settings, providers: ProviderConfig, authenticator: Authenticator,
                       audit: AuditRecorder, stack: AsyncExitStack) -> ProxyEndpoint:
    provider = providers.active
    upstream = AiohttpUpstream(provider)
    stack.push_async_callback(upstream.aclose)
    return ProxyEndpoint(
        provider=provider,
        validator=RequestValidator(provider),
        authenticator=authenticator,
        upstream=upstream,
        breaker=CircuitBreaker(provider.name),
        audit=audit,
        options=ProxyOptions(max_request_size=settings.server.max_request_size,
                             trust_proxy_headers=settings.server.trusted_proxy_headers),
    )
