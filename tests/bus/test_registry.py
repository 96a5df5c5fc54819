"""BUSES and build_bus: every entry imports and has the EventBus shape; aliases are logged."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path

import pytest

from llm_proxy.bus import BUSES, EventBus, Subscription, build_bus, import_from_string
from llm_proxy.bus.memory import MemoryBus, MemorySubscription
from llm_proxy.bus.redis_consumer import RedisSubscription
from llm_proxy.bus.redis_streams import RedisStreamsBus
from llm_proxy.errors import ConfigError
from llm_proxy.settings import Settings, load_settings


def protocol_members(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def settings_for(tmp_path: Path, bus: str) -> Settings:
    return load_settings({"LLM_PROXY_EVENT_BUS": bus, "EVENT_SPOOL_DIR": str(tmp_path)},
                         require_management_token=False)


class TestRegistry:
    @pytest.mark.parametrize("name", sorted(BUSES))
    def test_every_entry_imports_and_has_every_protocol_method(self, name: str) -> None:
        cls = import_from_string(BUSES[name])
        for member in protocol_members(EventBus):
            assert callable(getattr(cls, member)), member
            assert inspect.iscoroutinefunction(getattr(cls, member)) == inspect.iscoroutinefunction(
                getattr(EventBus, member)), member

    @pytest.mark.parametrize("cls", [MemorySubscription, RedisSubscription])
    def test_subscriptions_have_every_protocol_method(self, cls: type) -> None:
        for member in protocol_members(Subscription):
            assert inspect.iscoroutinefunction(getattr(cls, member)), member

    @pytest.mark.parametrize(("name", "cls"), [("in-memory", MemoryBus), ("memory", MemoryBus),
                                               ("redis-streams", RedisStreamsBus),
                                               ("redis", RedisStreamsBus)])
    def test_build_bus_picks_the_named_backend(self, tmp_path: Path, name: str,
                                               cls: type) -> None:
        settings = settings_for(tmp_path, name)
        bus = build_bus(settings.observability, settings.redis, logging.getLogger("t"))
        assert type(bus) is cls

    def test_the_redis_alias_is_logged(self, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
        settings = settings_for(tmp_path, "redis")
        with caplog.at_level(logging.INFO):
            build_bus(settings.observability, settings.redis, logging.getLogger("t"))
        assert "alias of 'redis-streams'" in caplog.text

    def test_an_unknown_bus_names_the_valid_ones(self, tmp_path: Path) -> None:
        settings = settings_for(tmp_path, "in-memory")
        observability = dataclasses.replace(settings.observability, event_bus="kafka")
        with pytest.raises(ConfigError, match="valid: in-memory, memory, redis-streams, redis"):
            build_bus(observability, settings.redis, logging.getLogger("t"))

    def test_memory_bus_takes_its_buffer_size_from_the_settings(self, tmp_path: Path) -> None:
        settings = load_settings({"OBSERVABILITY_BUFFER_SIZE": "7"},
                                 require_management_token=False)
        bus = build_bus(settings.observability, settings.redis, logging.getLogger("t"))
        assert isinstance(bus, MemoryBus)
        assert bus.buffer_size == 7
