"""Real services on loopback: skip a test when one is absent, fail instead when CI=true."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"


def service_up(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A loopback port that is free right now (for servers a test starts itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def skip_or_fail(message: str) -> None:
    """Skip the test, or fail it under CI=true, where every service and tool must be present."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (required under CI=true)")
    pytest.skip(message)


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or under CI=true, fail) unless `name` answers on host:port."""
    if not service_up(host, port):
        skip_or_fail(f"{name} is not reachable on {host}:{port}")


def require_tool(name: str, hint: str = "") -> None:
    """Skip (or under CI=true, fail) unless the executable `name` is installed; `hint` says where to get it."""
    if shutil.which(name) is None:
        skip_or_fail(f"{name} is not installed" + (f" ({hint})" if hint else ""))


def require_redis_server() -> None:
    require_tool(REDIS_SERVER)


class PrivateRedis:
    """A redis-server of this test only, on a free loopback port, that can be stopped."""

    def __init__(self, directory: Path, *, persistent: bool = False, options: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        self.options = options
        """More redis-server arguments, e.g. `("--rename-command", "EVAL", "")`."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
             "--dir", str(self.directory), *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=5)
            self.process = None
