"""`llm-proxy`: the command group. Subcommands live in sibling modules and load lazily."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from llm_proxy import __version__
from llm_proxy.errors import LlmProxyError

COMMANDS: dict[str, str] = {
    "server": "llm_proxy.cli.server:server",
    "quickstart": "llm_proxy.cli.quickstart:quickstart",
    "manage": "llm_proxy.cli.manage:manage",
    "migrate": "llm_proxy.cli.migrate:migrate",
    "mock-openai": "llm_proxy.cli.mock:mock_openai",
    "chat": "llm_proxy.cli.chat:chat",
    "dispatcher": "llm_proxy.cli.dispatcher:dispatcher",
    "benchmark": "llm_proxy.cli.benchmark:benchmark",
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when it runs, so `--help` stays fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._resolve(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._resolve(cmd_name)

    @staticmethod
    def _resolve(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        command: click.Command = getattr(module, attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llm-proxy")
def cli() -> None:
    """llm-proxy: a transparent gateway in front of OpenAI-compatible APIs."""


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="llm-proxy", standalone_mode=True)
    except LlmProxyError as exc:
        click.echo(f"llm-proxy: error: {exc}", err=True)
        sys.exit(1)
