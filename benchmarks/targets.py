"""The processes a benchmark run starts on 127.0.0.1, and how they are stopped.

Every child runs in its own session (process group), so Ctrl-C in the terminal reaches only the
harness, which then stops each child by its process-group id: SIGTERM, then SIGKILL after 5 s.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
UPSTREAM_KEY = "sk-mock-benchmark-upstream-key"
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH",
                 "VIRTUAL_ENV", "SYSTEMROOT")

# llm-proxy rows: scenario name -> extra environment. Later issues add rows here.
PROXY_SCENARIOS: dict[str, dict[str, str]] = {
    "proxy": {},
    "proxy-noobs": {"OBSERVABILITY_ENABLED": "false"},
    "proxy-redis": {"LLM_PROXY_EVENT_BUS": "redis-streams", "REDIS_ADDR": f"{LOOPBACK}:6379"},
    "proxy-cache": {"HTTP_CACHE_ENABLED": "true", "HTTP_CACHE_BACKEND": "in-memory",
                    "HTTP_CACHE_STREAM_RESPONSES": "true"},
    "proxy-cache-redis": {"HTTP_CACHE_ENABLED": "true", "HTTP_CACHE_BACKEND": "redis",
                          "HTTP_CACHE_STREAM_RESPONSES": "true", "REDIS_CACHE_URL": f"redis://{LOOPBACK}:6379/0"},
}
NEEDS_REDIS = frozenset({"proxy-redis", "proxy-cache-redis"})
# Rows whose load opts in to the response cache: after the first call of each mode, every call is a hit.
CACHE_OPT_IN = {"Cache-Control": "public, max-age=3600"}
SCENARIO_HEADERS: dict[str, dict[str, str]] = {"proxy-cache": CACHE_OPT_IN, "proxy-cache-redis": CACHE_OPT_IN}


class StartError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class Target:
    """A row of the table: where the load goes and with which bearer token."""

    name: str
    base_url: str
    token: str
    pid: int = 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def base_env() -> dict[str, str]:
    """Only the variables a child needs to run, so the caller's shell cannot change a row."""
    return {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}


def http_json(method: str, url: str, body: dict[str, Any] | None = None,
              token: str = "", timeout: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@dataclass
class Children:
    """Starts children and guarantees they are stopped, in reverse order, by `stop_all`."""

    workdir: Path
    started: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env or base_env(),
                                    cwd=self.workdir, start_new_session=True)
        child = Child(name, proc, log)
        self.started.append(child)
        return child

    def wait_ready(self, child: Child, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise StartError(f"{child.name} exited with {child.proc.returncode}:\n"
                                 f"{child.log_tail()}")
            try:
                status, _ = http_json("GET", url, token=UPSTREAM_KEY, timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            time.sleep(0.1)
        raise StartError(f"{child.name} not ready at {url} after {timeout:.0f} s:\n"
                         f"{child.log_tail()}")

    def stop_all(self) -> None:
        for child in reversed(self.started):
            stop(child.proc)
        self.started.clear()


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop a child we started (and its own children) through its process group."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def mock_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "llm_proxy", "mock-openai", "--host", LOOPBACK,
            "--port", str(port)]


def start_mock(children: Children) -> Target:
    port = free_port()
    child = children.start("mock", mock_argv(port))
    url = f"http://{LOOPBACK}:{port}"
    children.wait_ready(child, url + "/v1/models")
    return Target("direct", url, UPSTREAM_KEY, child.proc.pid)


def start_passthrough(children: Children, upstream: str) -> Target:
    port = free_port()
    argv = [sys.executable, str(HERE / "passthrough.py"), "--port", str(port),
            "--upstream", upstream]
    child = children.start("passthrough", argv)
    url = f"http://{LOOPBACK}:{port}"
    children.wait_ready(child, url + "/v1/models")
    return Target("passthrough", url, UPSTREAM_KEY, child.proc.pid)


def proxy_env(name: str, port: int, upstream: str, workdir: Path, management_token: str,
              extra: dict[str, str]) -> dict[str, str]:
    return base_env() | {
        "MANAGEMENT_TOKEN": management_token,
        "LISTEN_ADDR": f"{LOOPBACK}:{port}",
        "WORKERS": "1",
        "DB_DRIVER": "sqlite",
        "DATABASE_PATH": str(workdir / f"{name}.db"),
        "AUDIT_LOG_FILE": str(workdir / f"{name}-audit.log"),
        "EVENT_SPOOL_DIR": str(workdir / f"{name}-spool"),
        "OPENAI_API_URL": upstream,
        "API_CONFIG_PATH": str(workdir / "none.yaml"),
        "LOG_LEVEL": "warning",
        "LLM_PROXY_EVENT_BUS": "in-memory",
    } | extra


def start_proxy(children: Children, name: str, upstream: str, extra: dict[str, str]) -> Target:
    port = free_port()
    management_token = secrets.token_urlsafe(24)
    env = proxy_env(name, port, upstream, children.workdir, management_token, extra)
    child = children.start(name, [sys.executable, "-m", "llm_proxy", "server"], env)
    url = f"http://{LOOPBACK}:{port}"
    children.wait_ready(child, url + "/health", timeout=60.0)
    return Target(name, url, issue_token(url, management_token, name), child.proc.pid)


def issue_token(url: str, management_token: str, name: str) -> str:
    status, project = http_json("POST", url + "/manage/projects",
                                {"name": f"benchmark {name}", "api_key": UPSTREAM_KEY},
                                management_token)
    if status not in (200, 201):
        raise StartError(f"{name}: creating a project answered {status}: {project}")
    status, token = http_json("POST", url + "/manage/tokens",
                              {"project_id": project["id"], "duration_minutes": 60},
                              management_token)
    if status not in (200, 201):
        raise StartError(f"{name}: creating a token answered {status}: {token}")
    value: str = token["token"]
    return value
