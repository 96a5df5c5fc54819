"""At least once under faults: a failing sink, a dispatcher killed mid-batch, a Redis restart.

Nothing may be lost without a dead-letter record; duplicates are allowed only where the sink
cannot deduplicate (the file sink).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from llm_proxy.bus import build_bus
from llm_proxy.dispatcher.runner import serve
from tests.dispatcher.conftest import chat_event, eventually, pending_and_dead, publish, settings_with
from tests.fakes.helicone import FakeHelicone
from tests.fakes.lunary import FakeLunary
from tests.services import PrivateRedis, require_redis_server

pytestmark = pytest.mark.redis


async def test_a_sink_failing_for_a_while_loses_nothing(redis_env: dict[str, str]) -> None:
    ids = await publish(redis_env, 30)
    async with FakeLunary() as lunary, FakeHelicone() as helicone:
        lunary.fail_statuses = [503, 503, 429, 500]
        helicone.fail_statuses = [502] * 12
        stop = asyncio.Event()
        tasks = [asyncio.create_task(serve(settings_with(
            **redis_env, DISPATCHER_SERVICE=name, DISPATCHER_MAX_RETRIES="8", DISPATCHER_BATCH_SIZE="10", **env),
            stop)) for name, env in (
                ("lunary", {"LUNARY_API_URL": lunary.url, "LUNARY_PUBLIC_KEY": lunary.key}),
                ("helicone", {"HELICONE_API_URL": helicone.url, "HELICONE_API_KEY": helicone.key}))]
        await eventually(lambda: len(helicone.records) == 30
                         and sum("end" in r for r in lunary.runs.values()) == 30, within=15)
        stop.set()
        await asyncio.gather(*tasks)
    assert set(lunary.runs) == set(ids)
    assert lunary.problems == []
    assert sorted(helicone.posts.values()) == [1] * 30
    for group in ("llm-proxy-dispatchers-lunary", "llm-proxy-dispatchers-helicone"):
        assert await pending_and_dead(redis_env, group) == (0, 0)


async def test_a_dispatcher_killed_mid_batch_hands_its_batch_to_another(redis_env: dict[str, str],
                                                                        tmp_path: Path) -> None:
    ids = await publish(redis_env, 40)
    async with FakeHelicone() as helicone:
        helicone.held = asyncio.Event()
        env = {**os.environ, **redis_env, "HELICONE_API_URL": helicone.url, "HELICONE_API_KEY": helicone.key,
               "REDIS_CONSUMER_NAME": "victim", "DISPATCHER_BATCH_SIZE": "40", "LOG_LEVEL": "warning",
               "REDIS_STREAM_CLAIM_TIME": "1"}
        victim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llm_proxy", "dispatcher", "--service", "helicone",
            "--env", str(tmp_path / "none.env"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await eventually(lambda: helicone.started > 0 or victim.returncode is not None, within=20)
            assert victim.returncode is None, "the dispatcher exited before sending"
            victim.send_signal(signal.SIGKILL)  # mid-batch: its 40 events are in flight, none acknowledged
            assert await asyncio.wait_for(victim.wait(), 10) == -signal.SIGKILL
        finally:
            if victim.returncode is None:
                victim.kill()
                await victim.wait()
        assert await pending_and_dead(redis_env, "llm-proxy-dispatchers-helicone") == (40, 0)
        helicone.held.set()
        await asyncio.sleep(0.1)
        helicone.held = None
        stop = asyncio.Event()
        rescuer = asyncio.create_task(serve(settings_with(**{
            **redis_env, "DISPATCHER_SERVICE": "helicone", "HELICONE_API_URL": helicone.url,
            "HELICONE_API_KEY": helicone.key, "REDIS_CONSUMER_NAME": "rescuer", "REDIS_STREAM_CLAIM_TIME": "1"}), stop))
        await eventually(lambda: len(helicone.records) == 40, within=15)
        stop.set()
        await rescuer
    assert {r["headers"]["Helicone-Property-Event-Id"] for r in helicone.records.values()} == set(ids)
    assert await pending_and_dead(redis_env, "llm-proxy-dispatchers-helicone") == (0, 0)


async def test_a_redis_restart_loses_nothing(tmp_path: Path) -> None:
    require_redis_server()
    server = PrivateRedis(tmp_path, persistent=True)
    server.start()
    try:
        env = {"LLM_PROXY_EVENT_BUS": "redis-streams", "REDIS_URL": server.url, "REDIS_STREAM_BLOCK_TIME": "0.2",
               "REDIS_STREAM_CLAIM_TIME": "0.5", "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
               "DISPATCHER_SERVICE": "file", "DISPATCHER_ENDPOINT": str(tmp_path / "out.jsonl"),
               "DISPATCHER_FLUSH_INTERVAL": "0.05"}
        settings = settings_with(**env)
        publisher = build_bus(settings.observability, settings.redis, logging.getLogger("test"))
        await publisher.start()
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop))
        out = tmp_path / "out.jsonl"

        def delivered() -> set[str]:
            return {orjson.loads(line)["event_id"] for line in out.read_bytes().splitlines()} if out.exists() else set()

        before = [chat_event(i) for i in range(20)]
        for event in before:
            publisher.publish(event)
        await eventually(lambda: len(delivered()) == 20)
        server.stop()
        during = [chat_event(i) for i in range(20, 40)]
        for event in during:
            publisher.publish(event)
        await asyncio.sleep(0.5)
        server.start()
        await eventually(lambda: len(delivered()) == 40, within=15)
        stop.set()
        await task
        await publisher.aclose()
        assert delivered() == {e.event_id for e in before + during}
        client = Redis.from_url(server.url)
        assert await client.xlen(settings.redis.dead_letter_key) == 0
        await client.aclose()
    finally:
        server.stop()
