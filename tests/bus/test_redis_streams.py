"""RedisStreamsBus against the real Redis: stream contents, groups, claims, dead letters, spool."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_proxy.bus import BusError, Delivery
from llm_proxy.bus.redis_consumer import RedisSubscription
from llm_proxy.bus.spool import Spool
from llm_proxy.events import decode_event, encode_event, sanitize_headers
from llm_proxy.settings import RedisSettings
from tests.bus.conftest import BusFactory, eventually, make_event, redis_settings_for
from tests.services import PrivateRedis, free_port, require_redis_server

VICTIM = """
import asyncio, sys
from llm_proxy.bus.redis_streams import RedisStreamsBus
from llm_proxy.bus.spool import Spool
from llm_proxy.settings import load_settings

async def main():
    bus = RedisStreamsBus(load_settings(require_management_token=False).redis,
                          Spool(sys.argv[1], 1 << 20))
    sub = bus.subscribe("victim")
    got = []
    while len(got) < int(sys.argv[2]):
        got += await sub.receive(block=1)
    print(" ".join(d.id for d in got), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def stream_events(client: Redis, key: str) -> list[str]:
    """The request ids in the stream, in stream order."""
    return [decode_event(fields[b"data"]).request_id for _, fields in await client.xrange(key)]


async def receive_all(sub: RedisSubscription, count: int, block: float = 0.2) -> list[Delivery]:
    got: list[Delivery] = []
    for _ in range(50):
        got += await sub.receive(block=block)
        if len(got) >= count:
            break
    return got


@pytest.mark.redis
class TestPublishing:
    async def test_n_published_events_are_exactly_n_stream_entries_in_order(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory) -> None:
        bus = make_bus(redis_settings)
        await bus.start()
        events = [make_event(i, stream=i % 2 == 0) for i in range(120)]
        for event in events:
            bus.publish(event)
        await eventually(lambda: bus.stats().written == 120)
        entries = await raw_redis.xrange(redis_settings.stream_key)
        assert [list(fields) for _, fields in entries] == [[b"data"]] * 120
        assert [decode_event(fields[b"data"]) for _, fields in entries] == events
        stats = bus.stats()
        assert (stats.published, stats.spooled, stats.dropped, stats.connected) == (120, 0, 0, True)
        assert bus.ready().ok

    async def test_close_flushes_what_is_still_queued(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory) -> None:
        bus = make_bus(redis_settings)
        await bus.start()
        for i in range(300):
            bus.publish(make_event(i))
        await bus.aclose()
        assert await raw_redis.xlen(redis_settings.stream_key) == 300

    async def test_a_full_queue_overflows_to_the_spool_and_order_is_kept(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory) -> None:
        bus = make_bus(redis_settings, buffer_size=4)
        await bus.start()
        await eventually(lambda: bus.ready().ok)
        for i in range(60):
            bus.publish(make_event(i))
        await eventually(lambda: bus.stats().written == 60)
        assert await stream_events(raw_redis, redis_settings.stream_key) == [
            f"req-{i}" for i in range(60)]
        stats = bus.stats()
        assert stats.spooled > 0
        assert stats.replayed == stats.spooled
        assert stats.dropped == 0

    async def test_no_secret_reaches_the_stream(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory) -> None:
        token, key = "sk-proj-clienttoken0123456789", "sk-upstreamkey9876543210"
        bus = make_bus(redis_settings)
        await bus.start()
        headers = sanitize_headers([(b"authorization", f"Bearer {token}".encode()),
                                    (b"api-key", key.encode()), (b"accept", b"*/*")])
        bus.publish(make_event(1, request_headers=headers))
        await eventually(lambda: bus.stats().written == 1)
        [(_, fields)] = await raw_redis.xrange(redis_settings.stream_key)
        assert token.encode() not in fields[b"data"]
        assert key.encode() not in fields[b"data"]


@pytest.mark.redis
class TestConsuming:
    async def test_consumers_of_one_group_share_the_work(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory) -> None:
        bus = make_bus(redis_settings)
        await bus.start()
        first, second = bus.subscribe("c1"), bus.subscribe("c2")
        for i in range(40):
            bus.publish(make_event(i))
        await eventually(lambda: bus.stats().written == 40)
        got_first = await first.receive(15, block=1)
        got_second = await receive_all(second, 25)
        assert len(got_first) == 15
        assert len(got_second) == 25
        assert {d.event.request_id for d in got_first + got_second} == {
            f"req-{i}" for i in range(40)}
        await first.ack(got_first)
        await second.ack(got_second)
        pending = await raw_redis.xpending(redis_settings.stream_key, "dispatchers")
        assert pending["pending"] == 0

    async def test_two_groups_each_get_every_event(
            self, redis_settings: RedisSettings, make_bus: BusFactory) -> None:
        bus = make_bus(redis_settings)
        await bus.start()
        lunary, helicone = bus.subscribe("l", group="lunary"), bus.subscribe("h", group="helicone")
        for i in range(30):
            bus.publish(make_event(i))
        await eventually(lambda: bus.stats().written == 30)
        for sub in (lunary, helicone):
            got = await receive_all(sub, 30)
            assert [d.event.request_id for d in got] == [f"req-{i}" for i in range(30)]

    async def test_messages_of_a_killed_consumer_are_claimed_by_another(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory,
            tmp_path: Path) -> None:
        bus = make_bus(redis_settings)
        await bus.start()
        for i in range(5):
            bus.publish(make_event(i))
        await eventually(lambda: bus.stats().written == 5)
        env = dict(os.environ, REDIS_URL=redis_settings.url,
                   REDIS_STREAM_KEY=redis_settings.stream_key, REDIS_CONSUMER_GROUP="dispatchers")
        victim = await asyncio.create_subprocess_exec(
            sys.executable, "-c", VICTIM, str(tmp_path / "victim-spool"), "5", env=env,
            stdout=asyncio.subprocess.PIPE)
        try:
            assert victim.stdout is not None
            held = (await asyncio.wait_for(victim.stdout.readline(), 20)).decode().split()
        finally:
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
        assert len(held) == 5
        survivor = bus.subscribe("survivor")
        claimed = await receive_all(survivor, 5)
        assert sorted(d.id for d in claimed) == sorted(held)
        assert all(d.deliveries == 2 for d in claimed)
        await survivor.ack(claimed)
        assert (await raw_redis.xpending(redis_settings.stream_key, "dispatchers"))["pending"] == 0

    async def test_a_message_delivered_too_often_goes_to_the_dead_letter_stream(
            self, raw_redis: Redis, make_bus: BusFactory, redis_settings: RedisSettings) -> None:
        settings = redis_settings_for(
            redis_settings.url, REDIS_STREAM_KEY=redis_settings.stream_key,
            REDIS_DEAD_LETTER_KEY=redis_settings.dead_letter_key, REDIS_STREAM_MAX_DELIVERIES="2")
        bus = make_bus(settings)
        await bus.start()
        sub = bus.subscribe("forgetful")
        bus.publish(make_event(1))
        seen = [d.deliveries for d in await receive_all(sub, 1)]
        await asyncio.sleep(0.25)
        seen += [d.deliveries for d in await sub.receive(block=0.1)]
        assert seen == [1, 2]
        await asyncio.sleep(0.25)
        assert await sub.receive(block=0.1) == []
        [(_, fields)] = await raw_redis.xrange(settings.dead_letter_key)
        assert decode_event(fields[b"data"]).request_id == "req-1"
        assert b"3 times" in fields[b"reason"]
        assert fields[b"group"] == b"dispatchers"
        assert (await raw_redis.xpending(settings.stream_key, "dispatchers"))["pending"] == 0

    async def test_a_consumer_recreates_its_group_when_the_stream_vanished(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory) -> None:
        """As after a Redis restart without persistence."""
        bus = make_bus(redis_settings)
        await bus.start()
        sub = bus.subscribe("c")
        bus.publish(make_event(1))
        await sub.ack(await receive_all(sub, 1))
        await raw_redis.delete(redis_settings.stream_key)
        bus.publish(make_event(2))
        await eventually(lambda: bus.stats().written == 2)
        assert [d.event.request_id for d in await receive_all(sub, 1)] == ["req-2"]

    async def test_explicit_dead_letter_and_undecodable_entries(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory) -> None:
        bus = make_bus(redis_settings)
        sub = bus.subscribe("d")
        await raw_redis.xadd(redis_settings.stream_key, {"data": b"{not json"})
        await raw_redis.xadd(redis_settings.stream_key, {"data": encode_event(make_event(2))})
        [delivery] = await receive_all(sub, 1)
        await sub.dead_letter(delivery, "sink rejected: 400")
        reasons = [f[b"reason"] for _, f in await raw_redis.xrange(redis_settings.dead_letter_key)]
        assert reasons[0].startswith(b"undecodable event")
        assert reasons[1] == b"sink rejected: 400"
        assert (await raw_redis.xpending(redis_settings.stream_key, "dispatchers"))["pending"] == 0


@pytest.mark.redis
class TestRedisOutage:
    async def test_unreachable_redis_at_start_spools_and_a_restart_replays_in_order(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory,
            tmp_path: Path) -> None:
        closed = redis_settings_for(f"redis://127.0.0.1:{free_port()}/0",
                                    REDIS_STREAM_KEY=redis_settings.stream_key)
        down = make_bus(closed, spool_dir=tmp_path / "spool")
        await down.start()
        for i in range(30):
            down.publish(make_event(i))
        await eventually(lambda: down.stats().spooled == 30)
        readiness = down.ready()
        assert not readiness.ok
        assert "redis unreachable" in readiness.reason
        await down.aclose()
        up = make_bus(redis_settings, spool_dir=tmp_path / "spool")
        await up.start()
        await eventually(lambda: up.stats().replayed == 30)
        assert await stream_events(raw_redis, redis_settings.stream_key) == [
            f"req-{i}" for i in range(30)]
        assert list((tmp_path / "spool").rglob("seg-*")) == []

    async def test_redis_stopped_and_restarted_loses_nothing(
            self, private_redis: PrivateRedis, make_bus: BusFactory, tmp_path: Path) -> None:
        settings = redis_settings_for(private_redis.url)
        bus = make_bus(settings)
        await bus.start()
        bus.publish(make_event(0))
        await eventually(lambda: bus.stats().written == 1)
        private_redis.stop()
        for i in range(1, 41):
            bus.publish(make_event(i))
            if i % 10 == 0:
                await asyncio.sleep(0.05)
        await eventually(lambda: bus.stats().spooled == 40)
        assert not bus.ready().ok
        private_redis.start()  # an empty server: what the first one held is gone with it
        await eventually(lambda: bus.stats().replayed == 40)
        for i in range(41, 46):
            bus.publish(make_event(i))
        await eventually(lambda: bus.stats().written == 46)
        client = Redis.from_url(private_redis.url)
        try:
            assert await stream_events(client, settings.stream_key) == [
                f"req-{i}" for i in range(1, 46)]
        finally:
            await client.aclose()
        assert bus.ready().ok
        assert bus.stats().dropped == 0

    async def test_a_redis_without_scripting_gets_pipelined_xadds(
            self, make_bus: BusFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        require_redis_server()
        server = PrivateRedis(tmp_path, options=("--rename-command", "EVALSHA", "", "--rename-command", "EVAL", ""))
        server.start()
        try:
            settings = redis_settings_for(server.url)
            bus = make_bus(settings)
            await bus.start()
            for i in range(12):
                bus.publish(make_event(i))
                await asyncio.sleep(0.01)
            await eventually(lambda: bus.stats().written == 12)
            client = Redis.from_url(server.url)
            try:
                assert await stream_events(client, settings.stream_key) == [f"req-{i}" for i in range(12)]
            finally:
                await client.aclose()
            assert "refused the batch script" in caplog.text
        finally:
            server.stop()

    async def test_failing_writes_go_to_the_spool_until_redis_accepts_them(
            self, redis_settings: RedisSettings, raw_redis: Redis, make_bus: BusFactory) -> None:
        await raw_redis.set(redis_settings.stream_key, "not a stream")
        bus = make_bus(redis_settings)
        await bus.start()
        for i in range(10):
            bus.publish(make_event(i))
        await eventually(lambda: bus.stats().spooled == 10)
        assert "WRONGTYPE" in bus.ready().reason
        await raw_redis.delete(redis_settings.stream_key)
        await eventually(lambda: bus.stats().replayed == 10)
        assert await stream_events(raw_redis, redis_settings.stream_key) == [
            f"req-{i}" for i in range(10)]


class TestWithoutRedis:
    async def test_a_hung_redis_at_shutdown_leaves_the_queue_in_the_spool(
            self, make_bus: BusFactory, tmp_path: Path) -> None:
        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)
            writer.close()

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = redis_settings_for(f"redis://127.0.0.1:{port}/0")
        bus = make_bus(settings, spool_dir=tmp_path / "spool", shutdown_timeout=0.2)
        await bus.start()
        for i in range(10):
            bus.publish(make_event(i))
        await asyncio.sleep(0.05)
        await bus.aclose()
        server.close()
        spool = Spool(tmp_path / "spool", 1 << 20)
        spool.open()
        frames: list[bytes] = []
        while batch := await spool.peek(100):
            frames += batch
            spool.advance(len(batch))
        assert [decode_event(f).request_id for f in frames] == [f"req-{i}" for i in range(10)]

    async def test_publish_never_raises_and_drops_only_when_the_spool_is_full(
            self, make_bus: BusFactory) -> None:
        settings = redis_settings_for(f"redis://127.0.0.1:{free_port()}/0")
        bus = make_bus(settings, buffer_size=5, spool_max_bytes=3000)
        await bus.start()
        for i in range(100):
            bus.publish(make_event(i))
        await eventually(lambda: bus.stats().spooled + bus.stats().dropped == 100)
        stats = bus.stats()
        assert stats.dropped > 0
        assert 0 < stats.spool_bytes <= 3000
        assert stats.queue_depth == 0

    async def test_ack_without_redis_raises_bus_error(self, make_bus: BusFactory) -> None:
        settings = redis_settings_for(f"redis://127.0.0.1:{free_port()}/0")
        sub = make_bus(settings).subscribe("s")
        assert await sub.receive(block=0.05) == []
        with pytest.raises(BusError):
            await sub.ack([Delivery("1-0", make_event(1))])
