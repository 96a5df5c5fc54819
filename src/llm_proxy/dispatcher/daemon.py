"""`--detach`: start the same command again in a new session, with a pid file and a log file.

The parent re-runs `python -m llm_proxy <args>` without `--detach`, in a new session (no
controlling terminal, immune to the terminal's SIGHUP), stdin from /dev/null and stdout/stderr
appended to the log file. The child writes the pid file itself once it runs (`PidFile`) and
removes it when it exits; the parent returns only after the pid file names the child.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from llm_proxy.errors import LlmProxyError


class PidFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def running_pid(self) -> int | None:
        """The pid in the file if that process is alive."""
        try:
            pid = int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def acquire(self) -> None:
        other = self.running_pid()
        if other is not None and other != os.getpid():
            raise LlmProxyError(f"already running with pid {other} (pid file {self.path})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + f".{os.getpid()}")
        temporary.write_text(f"{os.getpid()}\n")
        temporary.replace(self.path)

    def release(self) -> None:
        if self.running_pid() == os.getpid():
            self.path.unlink(missing_ok=True)


def detach(args: Sequence[str], env: Mapping[str, str], pid_file: Path, log_file: Path,
           wait: float = 15.0) -> int:
    """Start `python -m llm_proxy *args` in the background; its pid once it wrote `pid_file`."""
    existing = PidFile(pid_file).running_pid()
    if existing is not None:
        raise LlmProxyError(f"already running with pid {existing} (pid file {pid_file})")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        child = subprocess.Popen(  # noqa: S603 - re-executes this very program
            [sys.executable, "-m", "llm_proxy", *args], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=dict(env), close_fds=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise LlmProxyError(f"the dispatcher exited with code {child.returncode}; see {log_file}")
        if PidFile(pid_file).running_pid() == child.pid:
            return child.pid
        time.sleep(0.05)
    raise LlmProxyError(f"the dispatcher did not start within {wait:.0f}s; see {log_file}")


def without_detach(argv: Sequence[str]) -> list[str]:
    return [arg for arg in argv if arg not in ("--detach", "-d")]
