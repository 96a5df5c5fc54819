"""`llm-proxy manage cache purge|stats`: the response cache of a running server.

Connection as the predecessor's `manage cache purge`: `--api-base-url` (alias of the group's
`--manage-api-base-url`), else MANAGEMENT_API_BASE_URL, else http://localhost:8080; the token
from `--management-token`, else MANAGEMENT_TOKEN (environment or `.env`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from llm_proxy.cli.manage_client import ManageClient, ManageError, emit, fields
from llm_proxy.cli.options import build_environment

DEFAULT_BASE_URL = "http://localhost:8080"
F = TypeVar("F", bound=Callable[..., Any])


def _client(ctx: click.Context, base_url: str | None, token: str | None) -> ManageClient:
    given: dict[str, str] = ctx.ensure_object(dict)
    env = build_environment(".env", {})
    token = token or given.get("management_token") or env.get("MANAGEMENT_TOKEN", "")
    base_url = base_url or given.get("base_url") or env.get("MANAGEMENT_API_BASE_URL") or DEFAULT_BASE_URL
    if not token.strip():
        raise ManageError("a management token is required: pass --management-token or set MANAGEMENT_TOKEN")
    if not base_url.startswith(("http://", "https://")):
        raise ManageError(f"--api-base-url must start with http:// or https://, got {base_url!r}")
    return ManageClient(base_url, token.strip())


def _command(function: F) -> F:
    """Connection flags, `--json`, and failures as one line with exit status 1."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ManageError as exc:
            click.echo(f"llm-proxy: error: {exc}", err=True)
            sys.exit(1)

    decorated: Any = click.pass_context(wrapper)
    for option in (
        click.option("--json", "as_json", is_flag=True, help="Print the raw JSON."),
        click.option("--management-token", help="Management API token (env MANAGEMENT_TOKEN)."),
        click.option("--api-base-url", "--manage-api-base-url", "base_url",
                     help=f"Server base URL (env MANAGEMENT_API_BASE_URL, default {DEFAULT_BASE_URL})."),
    ):
        decorated = option(decorated)
    result: F = decorated
    return result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cache() -> None:
    """Purge cached responses and show cache statistics."""


def purge_message(scope: str, deleted: int) -> str:
    if scope == "request":
        if not deleted:
            return "Cache entry was not found"
        suffix = f" ({deleted} entries)" if deleted > 1 else ""
        return f"Cache entry deleted successfully{suffix}"
    label = {"path_prefix": "path prefix", "all": "full"}.get(scope, scope)
    return f"Cache {label} purge completed: {deleted} entries deleted"


@cache.command()
@click.option("--method", help="With --url: the method of the request to purge (GET, POST, ...).")
@click.option("--url", help="With --method: the request's path and query, e.g. /v1/models?limit=5.")
@click.option("--body", help="With --method and --url: only the entry of this exact request body.")
@click.option("--path-prefix", help="Every entry whose request path starts with this.")
@click.option("--project-id", help="Every entry of this project (or narrow --url / --path-prefix to it).")
@click.option("--prefix", help="A raw key prefix, as shown in X-PROXY-CACHE-KEY.")
@click.option("--all", "everything", is_flag=True, help="Every entry.")
@_command
def purge(ctx: click.Context, method: str | None, url: str | None, body: str | None, path_prefix: str | None,
          project_id: str | None, prefix: str | None, everything: bool, base_url: str | None,
          management_token: str | None, as_json: bool) -> None:
    """Delete cached responses: one request, a path prefix, a project, a key prefix, or all."""
    payload: dict[str, Any] = {k: v for k, v in {
        "method": method, "url": url, "body": body, "path_prefix": path_prefix, "project_id": project_id,
        "prefix": prefix,
    }.items() if v is not None}
    if everything:
        payload["all"] = True
    if not payload:
        raise click.UsageError("give --method and --url, --path-prefix, --project-id, --prefix or --all")
    reply = _client(ctx, base_url, management_token).call("POST", "/manage/cache/purge", body=payload)
    emit(reply.body, as_json=as_json, text=purge_message(reply.body["scope"], reply.body["deleted"]))


@cache.command()
@_command
def stats(ctx: click.Context, base_url: str | None, management_token: str | None, as_json: bool) -> None:
    """Show the cache's settings, contents and the answering worker's counters."""
    reply = _client(ctx, base_url, management_token).call("GET", "/manage/cache/stats")
    data = reply.body
    rows = [(name.replace("_", " ").capitalize(), "-" if value is None else value) for name, value in data.items()]
    emit(data, as_json=as_json, text=fields(rows))
