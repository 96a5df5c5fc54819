"""`llm-proxy server`: the proxy, the management API and the probes on one port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import uvicorn

from llm_proxy.app import create_app
from llm_proxy.cli.options import build_environment, ensure_port_free, settings_or_exit
from llm_proxy.errors import ConfigError
from llm_proxy.http_protocol import JsonErrorHttpToolsProtocol
from llm_proxy.proxy.providers import load_providers
from llm_proxy.settings import Settings, export_environment, split_listen_addr
from llm_proxy.telemetry.logs import configure_logging


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    host, port = split_listen_addr(settings.server.listen_addr)
    return uvicorn.Config(
        app, host=host, port=port, lifespan="on", access_log=False, log_config=None,
        http=JsonErrorHttpToolsProtocol, loop="uvloop", timeout_keep_alive=75,
        timeout_graceful_shutdown=int(settings.server.shutdown_timeout) or None,
        server_header=False, date_header=True, proxy_headers=False,
    )


@click.command()
@click.option("--addr", envvar="LISTEN_ADDR", help="Listen address, host:port or :port (LISTEN_ADDR).")
@click.option("--db", "database_path", help="SQLite database file (DATABASE_PATH).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warn", "error"]), help="LOG_LEVEL.")
@click.option("--log-file", help="Append logs to this file (LOG_FILE).")
@click.option("-c", "--config", "api_config_path", help="Provider file (API_CONFIG_PATH).")
@click.option("--file-event-log", help="Append every event as a JSON line to this file (FILE_EVENT_LOG).")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (WORKERS).")
@click.option("--env", "env_file", default=".env", show_default=True, help="Env file read at start-up.")
@click.option("-d", "--daemon", is_flag=True, help="Run in the background (needs --log-file).")
@click.option("--pid-file", help="PID file for --daemon (PID_FILE, default tmp/server.pid).")
@click.option("-v", "--debug", is_flag=True, help="Same as --log-level debug.")
def server(addr: str | None, database_path: str | None, log_level: str | None, log_file: str | None,
           api_config_path: str | None, file_event_log: str | None, workers: int | None, env_file: str,
           daemon: bool, pid_file: str | None, debug: bool) -> None:
    """Run the proxy (/v1/*), the management API (/manage/*) and the probes.

    Configuration comes from flags, then the environment, then the env file. MANAGEMENT_TOKEN
    is required. See docs/configuration.md for every variable.
    """
    env = build_environment(env_file, {
        "LISTEN_ADDR": addr, "DATABASE_PATH": database_path, "LOG_LEVEL": "debug" if debug else log_level,
        "LOG_FILE": log_file, "API_CONFIG_PATH": api_config_path, "FILE_EVENT_LOG": file_event_log,
        "WORKERS": str(workers) if workers else None, "PID_FILE": pid_file,
    })
    settings = settings_or_exit(env)
    check_providers(settings)
    ensure_port_free(settings.server.listen_addr)
    if daemon:
        _daemonize(settings)
        return
    export_environment(env)
    run_server(settings)


def check_providers(settings: Settings) -> None:
    """Fail before binding the port when the provider file is invalid: one line per problem."""
    try:
        load_providers(settings.server, settings.environment)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"llm-proxy: config error: {problem}", err=True)
        sys.exit(2)


def exit_cleanly_after_shutdown() -> None:
    """uvicorn re-raises SIGTERM/SIGINT once its graceful shutdown is done; end with status 0 then."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))


def run_server(settings: Settings) -> None:
    configure_logging(settings.log)
    exit_cleanly_after_shutdown()
    if settings.server.workers > 1:
        host, port = split_listen_addr(settings.server.listen_addr)
        uvicorn.run("llm_proxy.app:create_app_from_environment", factory=True, host=host, port=port,
                    workers=settings.server.workers, lifespan="on", access_log=False, log_config=None,
                    http=JsonErrorHttpToolsProtocol, loop="uvloop", timeout_keep_alive=75, server_header=False,
                    proxy_headers=False,
                    timeout_graceful_shutdown=int(settings.server.shutdown_timeout) or None)
        return
    server_ = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    server_.run()
    if not server_.started:
        sys.exit(1)


def _daemonize(settings: Settings) -> None:
    """Start this command again without --daemon in a new session, detached from the terminal."""
    if not settings.log.file:
        click.echo("llm-proxy: error: --daemon needs --log-file (or LOG_FILE)", err=True)
        sys.exit(2)
    args = [a for a in sys.argv[1:] if a not in {"-d", "--daemon"}]
    pid_path = Path(settings.server.pid_file)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with open(settings.log.file, "ab") as log_handle:
        child = subprocess.Popen(  # noqa: S603 - re-executes this very program
            [sys.executable, "-m", "llm_proxy", *args], stdin=subprocess.DEVNULL, stdout=log_handle,
            stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy(),
        )
    pid_path.write_text(f"{child.pid}\n")
    host, port = split_listen_addr(settings.server.listen_addr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if child.poll() is not None:
            click.echo(f"llm-proxy: error: server exited with code {child.returncode}; see {settings.log.file}",
                       err=True)
            sys.exit(1)
        if _listening("127.0.0.1" if host == "0.0.0.0" else host, port):
            click.echo(f"llm-proxy server running in the background (pid {child.pid}, pid file {pid_path})")
            return
        time.sleep(0.1)
    click.echo(f"llm-proxy: error: server did not start listening within 30s; see {settings.log.file}", err=True)
    sys.exit(1)


def _listening(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
