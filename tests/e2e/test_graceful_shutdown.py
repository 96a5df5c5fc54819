"""SIGTERM: in-flight calls finish, queued events reach the spool, a restart replays them to Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from tests.e2e.test_cli_processes import LLM_PROXY, base_env, wait_http
from tests.services import free_port, require_service

from llm_proxy.events import decode_event
from llm_proxy.mock_upstream.threaded import ThreadedMock

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def manage(url: str, token: str, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


def chat(url: str, token: str, request_id: str, extra: dict[str, str] | None = None) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", "X-Request-ID": request_id,
        **(extra or {})})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.read()


@pytest.fixture
def mock() -> Iterator[ThreadedMock]:
    with ThreadedMock() as server:
        yield server


def start_server(tmp: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*LLM_PROXY, "server", "--addr", f"127.0.0.1:{port}"], env=env, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


class TestGracefulShutdown:
    def test_in_flight_stream_finishes_and_spooled_events_are_replayed_after_restart(
            self, tmp_path: Path, mock: ThreadedMock) -> None:
        require_service("Redis", "127.0.0.1", 6379)
        key = f"test-shutdown-{uuid.uuid4().hex[:10]}"
        env = base_env(tmp_path, MANAGEMENT_TOKEN="mt", OPENAI_API_URL=mock.url, LLM_PROXY_EVENT_BUS="redis-streams",
                       REDIS_URL="redis://127.0.0.1:1/0", REDIS_STREAM_KEY=key, SHUTDOWN_TIMEOUT="15s")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(tmp_path, port, env)
        try:
            project = manage(url, "mt", "/manage/projects", {"name": "p", "api_key": "sk-mock-key-1234"})
            issued = manage(url, "mt", "/manage/tokens", {"project_id": project["id"], "duration_minutes": 5})
            token = str(issued["token"])
            for i in range(5):
                chat(url, token, f"before-{i}")
            result: dict[str, bytes] = {}
            slow = threading.Thread(target=lambda: result.update(body=chat(
                url, token, "in-flight", {"X-Mock-Chunk-Delay-Ms": "150", "X-Mock-Chunks": "10"})))
            slow.start()
            time.sleep(0.4)
            proc.send_signal(signal.SIGTERM)
            slow.join(timeout=30)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert result["body"].rstrip().endswith(b"data: [DONE]"), "the in-flight stream was cut"

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            restarted = start_server(tmp_path, free_port(), {**env, "REDIS_URL": "redis://127.0.0.1:6379/0"})
            try:
                deadline = time.monotonic() + 15
                while client.xlen(key) < 6 and time.monotonic() < deadline:
                    time.sleep(0.1)
                ids = sorted(decode_event(fields[b"data"]).request_id for _, fields in client.xrange(key))
            finally:
                restarted.send_signal(signal.SIGTERM)
                restarted.wait(timeout=30)
        finally:
            client.delete(key, f"{key}-dead")
            client.close()
        assert ids == sorted([*(f"before-{i}" for i in range(5)), "in-flight"])
