"""`llm-proxy dispatcher`: dead-letter list and replay, replay from a file, --detach with health."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from click.testing import CliRunner, Result

from llm_proxy.cli import cli
from llm_proxy.dispatcher.runner import serve
from llm_proxy.events import encode_event
from tests.dispatcher.conftest import chat_event, eventually, pending_and_dead, publish, settings_with
from tests.fakes.lunary import FakeLunary
from tests.services import free_port


async def invoke(args: list[str], env: dict[str, str]) -> Result:
    """Run the CLI in a thread (it runs its own event loop), without reading any .env file."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, ["dispatcher", "--env", "/nonexistent.env", *args], env=env)


class TestReplayFromFile:
    async def test_backfills_a_sink_and_reports_unreadable_lines(self, tmp_path: Path) -> None:
        events = [chat_event(i) for i in range(3)]
        source = tmp_path / "events.jsonl"
        source.write_bytes(b"".join(encode_event(e) + b"\n" for e in events) + b"not json\n")
        out = tmp_path / "out.jsonl"
        result = await invoke(["replay", "--from", str(source), "--service", "file", "--endpoint", str(out)], {})
        assert result.exit_code == 1
        assert "3 events delivered, 0 failed, 1 unreadable" in result.output
        assert [orjson.loads(line)["event_id"] for line in out.read_bytes().splitlines()] == [
            e.event_id for e in events]

    async def test_a_file_sink_output_can_be_replayed(self, tmp_path: Path) -> None:
        source, first, second = tmp_path / "in.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        source.write_bytes(encode_event(chat_event(0)) + b"\n")
        assert (await invoke(["replay", "--from", str(source), "--service", "file", "--endpoint", str(first)],
                             {})).exit_code == 0
        result = await invoke(["replay", "--from", str(first), "--service", "file", "--endpoint", str(second)], {})
        assert result.exit_code == 0, result.output
        assert orjson.loads(second.read_bytes())["input_tokens"] == 7


@pytest.mark.redis
class TestDeadLetters:
    async def test_list_then_replay_once_the_service_is_back(self, redis_env: dict[str, str]) -> None:
        ids = await publish(redis_env, 4)
        async with FakeLunary() as lunary:
            env = {**redis_env, "LUNARY_API_URL": lunary.url, "LUNARY_PUBLIC_KEY": lunary.key,
                   "DISPATCHER_MAX_RETRIES": "0"}
            lunary.fail_statuses = [400] * 10
            stop = asyncio.Event()
            task = asyncio.create_task(serve(settings_with(**env, DISPATCHER_SERVICE="lunary"), stop))
            group = "llm-proxy-dispatchers-lunary"

            async def all_dead() -> bool:
                return await pending_and_dead(redis_env, group) == (0, 4)

            await eventually(all_dead)
            stop.set()
            await task
            assert await pending_and_dead(redis_env, group) == (0, 4)
            listed = await invoke(["dead-letter", "list", "--service", "lunary", "--json"], env)
            rows = [orjson.loads(line) for line in listed.output.splitlines()]
            assert [row["event_id"] for row in rows] == ids
            assert all("lunary sink: SinkRejectedError: lunary answered HTTP 400" in row["reason"] for row in rows)
            lunary.fail_statuses = []
            replayed = await invoke(["dead-letter", "replay", "--service", "lunary"], env)
            assert replayed.exit_code == 0, replayed.output
            assert "4 dead letters delivered, 0 failed" in replayed.output
        assert set(lunary.runs) == set(ids)
        assert await pending_and_dead(redis_env, group) == (0, 0)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in state


@pytest.mark.redis
@pytest.mark.e2e
async def test_detach_runs_in_the_background_with_pid_file_log_and_health(redis_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    pid_file, log_file, out = tmp_path / "d.pid", tmp_path / "d.log", tmp_path / "out.jsonl"
    port = free_port()
    env = {**os.environ, **redis_env, "LOG_LEVEL": "info"}
    started = time.monotonic()
    result = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "llm_proxy", "dispatcher", "--service", "file", "--endpoint", str(out), "--detach",
        "--pid-file", str(pid_file), "--log-file", str(log_file), "--health-addr", f"127.0.0.1:{port}",
        "--env", str(tmp_path / "none.env")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pid = int(pid_file.read_text())
    try:
        assert f"pid {pid}" in result.stdout
        assert time.monotonic() - started < 20
        ids = await publish(redis_env, 5)
        await eventually(lambda: out.exists() and len(out.read_bytes().splitlines()) == 5, within=10)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/health") as response:
            report = await response.json()
        assert response.status == 200
        assert report["delivered"] == 5
        assert report["service"] == "file"
        assert [orjson.loads(line)["event_id"] for line in out.read_bytes().splitlines()] == ids
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGTERM)
    await eventually(lambda: gone(pid), within=15)
    assert not pid_file.exists()
    assert "consumer group 'llm-proxy-dispatchers-file'" in log_file.read_text()


class TestConfiguration:
    async def test_a_sink_without_its_key_is_one_clear_error(self) -> None:
        result = await invoke(["--service", "lunary"], {"LUNARY_PUBLIC_KEY": ""})
        assert result.exit_code == 2
        assert "LUNARY_PUBLIC_KEY: the lunary sink needs a project key" in result.output

    async def test_the_in_memory_bus_is_refused(self, tmp_path: Path) -> None:
        result = await invoke(["--service", "file", "--endpoint", str(tmp_path / "x.jsonl")],
                              {"LLM_PROXY_EVENT_BUS": "in-memory"})
        assert result.exit_code == 2
        assert "the dispatcher reads redis-streams" in result.output

    async def test_a_bad_telemetry_handler_fails_before_detaching(self, tmp_path: Path,
                                                                  redis_env: dict[str, str]) -> None:
        pid_file = tmp_path / "d.pid"
        result = await invoke(["--service", "file", "--endpoint", str(tmp_path / "x.jsonl"), "--detach",
                               "--pid-file", str(pid_file)],
                              {**redis_env, "TELEMETRY_HANDLERS": "no_such_module_here:install"})
        assert result.exit_code == 2
        assert "TELEMETRY_HANDLERS: cannot load no_such_module_here:install" in result.output
        assert not pid_file.exists()
