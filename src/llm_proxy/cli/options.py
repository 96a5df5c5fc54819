"""Pieces shared by the commands that start long-running processes."""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping

import click

from llm_proxy.errors import ConfigError
from llm_proxy.settings import Settings, load_dotenv, load_settings, process_environment, split_listen_addr


def build_environment(env_file: str, overrides: Mapping[str, str | None]) -> dict[str, str]:
    """Process environment, then `.env` (never overriding), then flags (always overriding)."""
    env = process_environment()
    load_dotenv(env_file, env)
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def settings_or_exit(env: Mapping[str, str], *, require_management_token: bool = True) -> Settings:
    try:
        return load_settings(env, require_management_token=require_management_token)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"llm-proxy: config error: {problem}", err=True)
        sys.exit(2)


def ensure_port_free(listen_addr: str) -> None:
    host, port = split_listen_addr(listen_addr)
    probe_host = "127.0.0.1" if host in {"0.0.0.0", ""} else host
    with socket.socket(socket.AF_INET6 if ":" in probe_host else socket.AF_INET) as sock:
        if sock.connect_ex((probe_host, port)) == 0:
            click.echo(f"llm-proxy: error: {listen_addr} is already in use", err=True)
            sys.exit(1)
