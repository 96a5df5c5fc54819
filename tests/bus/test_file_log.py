"""FileEventLog: one JSON line per published event, from a tap that takes no group's work."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_proxy.bus.file_log import FileEventLog
from llm_proxy.bus.memory import MemoryBus
from llm_proxy.events import decode_event
from llm_proxy.settings import RedisSettings
from tests.bus.conftest import BusFactory, eventually, make_event


def logged_ids(path: Path) -> list[str]:
    return [decode_event(line).request_id for line in path.read_bytes().splitlines()]


async def log_one_event(path: Path, i: int) -> None:
    bus = MemoryBus(100)
    log = FileEventLog.attach(bus, path)
    await log.start()
    bus.publish(make_event(i))
    await eventually(lambda: bus.stats().groups[0].acked == 1)
    await log.aclose()


class TestFileEventLog:
    async def test_every_event_becomes_one_line_and_the_group_still_gets_all(
            self, tmp_path: Path) -> None:
        bus = MemoryBus(100)
        dispatcher = bus.subscribe("dispatcher")
        log = FileEventLog.attach(bus, tmp_path / "logs" / "events.jsonl")
        await log.start()
        for i in range(25):
            bus.publish(make_event(i))
        await log.aclose()
        assert logged_ids(tmp_path / "logs" / "events.jsonl") == [f"req-{i}" for i in range(25)]
        assert len(await dispatcher.receive(100, block=0)) == 25
        assert log.written == 25

    async def test_lines_are_appended_across_restarts_and_acked(
            self, tmp_path: Path) -> None:
        path = tmp_path / "events.jsonl"
        for run in range(2):
            await log_one_event(path, run)
        assert logged_ids(path) == ["req-0", "req-1"]

    async def test_a_sustained_stream_above_the_tap_capacity_per_fsync_interval_loses_nothing(
            self, tmp_path: Path) -> None:
        bus = MemoryBus(100)  # the tap holds 100 events; 0.2 s between fsyncs holds far more than that
        log = FileEventLog.attach(bus, tmp_path / "events.jsonl")
        await log.start()
        for i in range(3000):
            bus.publish(make_event(i))
            if i % 50 == 49:
                await asyncio.sleep(0.001)  # a busy server: the log runs between requests
        await log.aclose()
        assert bus.stats().dropped == 0
        assert logged_ids(tmp_path / "events.jsonl") == [f"req-{i}" for i in range(3000)]

    async def test_an_unwritable_path_fails_at_start(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("")
        log = FileEventLog.attach(MemoryBus(10), tmp_path / "file" / "events.jsonl")
        with pytest.raises(FileExistsError):
            await log.start()

    @pytest.mark.redis
    async def test_with_redis_the_log_is_a_local_tap_outside_the_consumer_group(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory,
            tmp_path: Path) -> None:
        bus = make_bus(redis_settings)
        log = FileEventLog.attach(bus, tmp_path / "events.jsonl")
        await bus.start()
        await log.start()
        for i in range(20):
            bus.publish(make_event(i))
        await eventually(lambda: bus.stats().written == 20)
        await log.aclose()
        assert logged_ids(tmp_path / "events.jsonl") == [f"req-{i}" for i in range(20)]
        groups = await raw_redis.xinfo_groups(redis_settings.stream_key)
        assert groups == []
