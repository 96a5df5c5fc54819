"""SIGKILL under load: the write-ahead log hands what the dead proxy had not sent to the next one.

The instrumentation holds a call's last body message until its event is published (and so in
the log), so every call the client saw complete must be in the stream after the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import aiohttp
import pytest
import redis
from tests.e2e.test_cli_processes import LLM_PROXY, base_env, wait_http
from tests.e2e.test_graceful_shutdown import manage
from tests.services import free_port, require_service

from llm_proxy.events import decode_event
from llm_proxy.mock_upstream.threaded import ThreadedMock

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

REDIS_URL = "redis://127.0.0.1:6379/0"
CLIENTS = 20
LOAD_SECONDS = 2.0
REPLAYED = re.compile(r"(\d+) events of a process that stopped before sending them are replayed")


@pytest.fixture
def mock() -> Iterator[ThreadedMock]:
    with ThreadedMock() as server:
        yield server


def start_server(tmp: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as log_file:
        proc = subprocess.Popen([*LLM_PROXY, "server", "--addr", f"127.0.0.1:{port}"], env=env, cwd=tmp,
                                stdout=log_file, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


async def chat(http: aiohttp.ClientSession, url: str, token: str, request_id: str, stream: bool) -> bool:
    """True when the proxy answered 200 with the whole body."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
        data = await resp.read()
    if resp.status != 200:
        return False
    if stream:
        return data.rstrip().endswith(b"data: [DONE]")
    return bool(json.loads(data).get("choices"))


async def load_then_kill(url: str, token: str, pid: int) -> set[str]:
    """CLIENTS clients call the proxy for LOAD_SECONDS, then it is killed; the ids answered 200 in full."""
    answered: set[str] = set()
    numbers = count()
    killed = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        while not killed.is_set():
            n = next(numbers)
            request_id = f"k9-{n}"
            try:
                if await chat(http, url, token, request_id, stream=n % 2 == 0):
                    answered.add(request_id)
            except (aiohttp.ClientError, ValueError, OSError):
                if not killed.is_set():
                    raise

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        clients = [asyncio.create_task(client(http)) for _ in range(CLIENTS)]
        await asyncio.sleep(LOAD_SECONDS)
        os.kill(pid, signal.SIGKILL)
        killed.set()
        await asyncio.gather(*clients)
    return answered


def stream_request_ids(client: redis.Redis, key: str) -> list[str]:
    return [decode_event(fields[b"data"]).request_id for _, fields in client.xrange(key)]


def wait_for_length(client: redis.Redis, key: str, length: int, within: float) -> None:
    deadline = time.monotonic() + within
    while client.xlen(key) < length and time.monotonic() < deadline:
        time.sleep(0.1)


class TestSigkillUnderLoad:
    def test_every_answered_request_reaches_the_stream_after_a_restart(
            self, tmp_path: Path, mock: ThreadedMock) -> None:
        require_service("Redis", "127.0.0.1", 6379)
        key = f"test-sigkill-{uuid.uuid4().hex[:10]}"
        env = base_env(tmp_path, MANAGEMENT_TOKEN="mt", OPENAI_API_URL=mock.url, LLM_PROXY_EVENT_BUS="redis-streams",
                       REDIS_URL=REDIS_URL, REDIS_STREAM_KEY=key, EVENT_SPOOL_DIR=str(tmp_path / "spool"), WORKERS="1")
        client = redis.Redis.from_url(REDIS_URL)
        try:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_server(tmp_path, port, env, tmp_path / "first.log")
            try:
                project = manage(url, "mt", "/manage/projects", {"name": "p", "api_key": "sk-mock-key-1234"})
                issued = manage(url, "mt", "/manage/tokens", {"project_id": project["id"], "duration_minutes": 5})
                answered = asyncio.run(load_then_kill(url, str(issued["token"]), proc.pid))
                assert proc.wait(timeout=10) == -signal.SIGKILL
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            assert len(answered) > 100, "too little load to say anything"
            after_kill = stream_request_ids(client, key)
            missing_after_kill = answered - set(after_kill)
            print(f"\n{len(answered)} requests answered 200; {len(missing_after_kill)} of their events "
                  f"not in the stream right after SIGKILL")

            port = free_port()
            restarted = start_server(tmp_path, port, env, tmp_path / "second.log")
            try:
                log = (tmp_path / "second.log").read_text()
                replayed = sum(int(n) for n in REPLAYED.findall(log))
                wait_for_length(client, key, len(after_kill) + replayed, within=15)
                ids = stream_request_ids(client, key)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
                    ready = json.loads(resp.read())
            finally:
                restarted.send_signal(signal.SIGTERM)
                assert restarted.wait(timeout=30) == 0
        finally:
            client.delete(key, f"{key}-dead")
            client.close()
        lost = sorted(answered - set(ids))
        print(f"restarted proxy replayed {replayed} events; the stream holds {len(ids)} entries, "
              f"{len(set(ids))} distinct ids; answered but not in the stream: {lost}")
        assert lost == []
        assert ids[:len(after_kill)] == after_kill
        assert len(ids) == len(after_kill) + replayed, "the restart adds what it replays, nothing else"
        assert ready["status"] == "ready", ready
        log = (tmp_path / "second.log").read_text()
        assert "Traceback" not in log, log
