"""The CLI as an operator meets it: real processes on 127.0.0.1, bounded in time, stopped by PID."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.services import free_port

pytestmark = pytest.mark.e2e

LLM_PROXY = [sys.executable, "-m", "llm_proxy"]


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_PROXY_", "DATABASE_", "REDIS_"))}
    env.update({"DATABASE_PATH": str(tmp / "db.sqlite"), "AUDIT_LOG_FILE": str(tmp / "audit.log"),
                "EVENT_SPOOL_DIR": str(tmp / "spool"), "API_CONFIG_PATH": str(tmp / "none.yaml"),
                "LOG_LEVEL": "warning"})
    env.pop("MANAGEMENT_TOKEN", None)
    env.update(extra)
    return env


def wait_http(url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {within}s")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


class TestServerCommand:
    def test_missing_management_token_is_one_clear_line(self, tmp_path: Path) -> None:
        result = subprocess.run([*LLM_PROXY, "server"], env=base_env(tmp_path), capture_output=True,
                                text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip() == ("llm-proxy: config error: MANAGEMENT_TOKEN: required "
                                         "(the bearer token of the management API)")

    def test_invalid_provider_file_fails_before_start(self, tmp_path: Path) -> None:
        bad = tmp_path / "providers.yaml"
        bad.write_text("apis: {openai: {base_url: nope}}\n")
        env = base_env(tmp_path, MANAGEMENT_TOKEN="m", API_CONFIG_PATH=str(bad))
        result = subprocess.run([*LLM_PROXY, "server"], env=env, capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines and all(line.startswith("llm-proxy: config error: ") for line in lines)
        assert any("base_url" in line for line in lines)
        assert "Traceback" not in result.stderr

    def test_serves_and_stops_gracefully_on_sigterm(self, tmp_path: Path,
                                                    processes: list[subprocess.Popen[bytes]]) -> None:
        port = free_port()
        env = base_env(tmp_path, MANAGEMENT_TOKEN="m-token")
        proc = subprocess.Popen([*LLM_PROXY, "server", "--addr", f"127.0.0.1:{port}"], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(proc)
        wait_http(f"http://127.0.0.1:{port}/ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0

    def test_daemon_detaches_and_writes_a_pid_file(self, tmp_path: Path) -> None:
        port = free_port()
        pid_file = tmp_path / "server.pid"
        env = base_env(tmp_path, MANAGEMENT_TOKEN="m-token")
        result = subprocess.run(
            [*LLM_PROXY, "server", "--daemon", "--addr", f"127.0.0.1:{port}", "--pid-file", str(pid_file),
             "--log-file", str(tmp_path / "server.log")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        pid = int(pid_file.read_text())
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            assert os.getsid(pid) == pid, "the daemon should lead its own session"
        finally:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)


class TestQuickstart:
    def test_quickstart_prints_a_working_token(self, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
        port = free_port()
        env = base_env(tmp_path)
        env.pop("OPENAI_API_KEY", None)
        proc = subprocess.Popen([*LLM_PROXY, "quickstart", "--addr", f"127.0.0.1:{port}",
                                 "--data-dir", str(tmp_path / "data")], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(proc)
        assert proc.stdout is not None
        output = ""
        deadline = time.monotonic() + 60
        while "Project token" not in output and time.monotonic() < deadline and proc.poll() is None:
            output += proc.stdout.readline().decode()
        match = re.search(r"Project token \(24 h\): (sk-[A-Za-z0-9_-]{22})", output)
        assert match, output
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Authorization": f"Bearer {match.group(1)}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["choices"][0]["message"]["content"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
