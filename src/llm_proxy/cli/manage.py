"""`llm-proxy manage`: projects and tokens through the management API of a running server.

The base URL and token come from `--manage-api-base-url` / `--management-token` (accepted on
the group or on any command), else MANAGEMENT_API_BASE_URL / MANAGEMENT_TOKEN from the
environment or `.env`. Failures print one line, `llm-proxy: error: ...`, and exit 1.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from llm_proxy.cli.manage_cache import cache
from llm_proxy.cli.manage_client import (
    ManageClient,
    ManageError,
    Reply,
    emit,
    fields,
    page_footer,
    project_fields,
    project_table,
    token_fields,
    token_table,
    when,
)
from llm_proxy.cli.options import build_environment
from llm_proxy.records import BUDGET_PERIODS

DEFAULT_BASE_URL = "http://localhost:8080"
F = TypeVar("F", bound=Callable[..., Any])


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and param.name is not None:
        ctx.ensure_object(dict)[param.name] = value
    return value


def connection_options(command: F) -> F:
    """The connection flags, accepted wherever they are written (cobra's persistent flags)."""
    command = click.option(
        "--management-token", "management_token", expose_value=False, callback=_remember,
        help="Management API token (env MANAGEMENT_TOKEN).",
    )(command)
    return click.option(
        "--manage-api-base-url", "base_url", expose_value=False, callback=_remember,
        help=f"Management API base URL (env MANAGEMENT_API_BASE_URL, default {DEFAULT_BASE_URL}).",
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")(command)


def client(ctx: click.Context) -> ManageClient:
    given: dict[str, str] = ctx.ensure_object(dict)
    env = build_environment(".env", {})
    token = given.get("management_token") or env.get("MANAGEMENT_TOKEN", "")
    base_url = given.get("base_url") or env.get("MANAGEMENT_API_BASE_URL") or DEFAULT_BASE_URL
    if not token.strip():
        raise ManageError("a management token is required: pass --management-token or set MANAGEMENT_TOKEN")
    if not base_url.startswith(("http://", "https://")):
        raise ManageError(f"--manage-api-base-url must start with http:// or https://, got {base_url!r}")
    return ManageClient(base_url, token.strip())


def one_line_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ManageError as exc:
            click.echo(f"llm-proxy: error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def leaf(group: click.Group, name: str, **settings: Any) -> Callable[[F], click.Command]:
    """A subcommand with the connection flags and one-line error handling."""
    def register(function: F) -> click.Command:
        decorated = connection_options(one_line_errors(click.pass_context(function)))
        return group.command(name, **settings)(decorated)

    return register


class JsonObject(click.ParamType[dict[str, Any]]):
    name = "JSON object"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            self.fail(f"not valid JSON ({exc})", param, ctx)
        if not isinstance(parsed, dict):
            self.fail('must be a JSON object, e.g. {"user_id": "alice"}', param, ctx)
        return parsed


CLEAR = "none"


class UsdAmount(click.ParamType[Any]):
    """A non-negative amount of USD, or `none` to send null (no budget / no alert)."""

    name = "USD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) or value == CLEAR:
            return value
        if str(value).strip().lower() == CLEAR:
            return CLEAR
        try:
            amount = float(value)
        except ValueError:
            self.fail(f"expected an amount in USD like 25 or 0.5, or none; got {value!r}", param, ctx)
        if not math.isfinite(amount) or amount < 0:
            self.fail(f"must be a finite amount >= 0, got {value!r}", param, ctx)
        return amount


def spend_options(command: F) -> F:
    command = click.option(
        "--budget-period", type=click.Choice(BUDGET_PERIODS),
        help="UTC period of the budget and the alert (default monthly).",
    )(command)
    command = click.option(
        "--cost-alert-threshold", type=UsdAmount(),
        help="Alert (telemetry and audit) once per period when the spend reaches this many USD; none clears it.",
    )(command)
    return click.option(
        "--max-budget", type=UsdAmount(),
        help="Refuse calls (429 budget_exceeded) once the period's spend reaches this many USD; none clears it.",
    )(command)


def _spend_body(max_budget: Any, cost_alert_threshold: Any, budget_period: str | None) -> dict[str, Any]:
    given = {"max_budget": max_budget, "cost_alert_threshold": cost_alert_threshold,
             "budget_period": budget_period}
    return {name: None if value == CLEAR else value for name, value in given.items() if value is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@connection_options
@click.pass_context
def manage(ctx: click.Context) -> None:
    """Manage projects and tokens through a running server's management API."""
    # One dict shared by every sub-context, so flags given at any level are seen by the leaf.
    ctx.ensure_object(dict)


@manage.group()
def project() -> None:
    """List, show, create, update and deactivate projects."""


@manage.group()
def token() -> None:
    """Issue, list, show, update and revoke tokens."""


def paging(command: F) -> F:
    command = click.option("--page-size", type=click.IntRange(1, 500), help="Items per page.")(command)
    command = click.option("--page", type=click.IntRange(min=1), help="Page number (from 1).")(command)
    return click.option("--active-only", is_flag=True, help="Only active records.")(command)


def _paging_params(page: int | None, page_size: int | None, active_only: bool) -> dict[str, str]:
    params = {"page": page, "page_size": page_size, "active_only": "true" if active_only else None}
    return {key: str(value) for key, value in params.items() if value is not None}


def _listing(reply: Reply, as_json: bool, render: Callable[[Any], str], noun: str) -> None:
    items = reply.body or []
    text = render(items) + "\n" + page_footer(reply, len(items)) if items else f"No {noun} found."
    emit(items, as_json=as_json, text=text)


@leaf(project, "list")
@paging
@json_option
def project_list(ctx: click.Context, page: int | None, page_size: int | None, active_only: bool,
                 as_json: bool) -> None:
    """List projects, ordered by name."""
    reply = client(ctx).call("GET", "/manage/projects", params=_paging_params(page, page_size, active_only))
    _listing(reply, as_json, project_table, "projects")


@leaf(project, "get")
@click.argument("project_id")
@json_option
def project_get(ctx: click.Context, project_id: str, as_json: bool) -> None:
    """Show one project."""
    reply = client(ctx).call("GET", f"/manage/projects/{project_id}")
    emit(reply.body, as_json=as_json, text=project_fields(reply.body))


@leaf(project, "create")
@click.option("--name", required=True, help="Unique project name.")
@click.option("--api-key", "--openai-key", "api_key", required=True, help="The upstream provider API key.")
@spend_options
@json_option
def project_create(ctx: click.Context, name: str, api_key: str, max_budget: Any, cost_alert_threshold: Any,
                   budget_period: str | None, as_json: bool) -> None:
    """Create a project."""
    body = {"name": name, "api_key": api_key, **_spend_body(max_budget, cost_alert_threshold, budget_period)}
    reply = client(ctx).call("POST", "/manage/projects", body=body)
    emit(reply.body, as_json=as_json, text=project_fields(reply.body))


@leaf(project, "update")
@click.argument("project_id")
@click.option("--name", help="New name.")
@click.option("--api-key", "--openai-key", "api_key", help="New upstream provider API key.")
@click.option("--active/--inactive", "is_active", default=None, help="Reactivate or deactivate.")
@spend_options
@json_option
def project_update(ctx: click.Context, project_id: str, name: str | None, api_key: str | None,
                   is_active: bool | None, max_budget: Any, cost_alert_threshold: Any, budget_period: str | None,
                   as_json: bool) -> None:
    """Change a project's name, API key, activity, budget or alert threshold."""
    body = {k: v for k, v in {"name": name, "api_key": api_key, "is_active": is_active}.items()
            if v is not None}
    body |= _spend_body(max_budget, cost_alert_threshold, budget_period)
    if not body:
        raise click.UsageError("give at least one of --name, --api-key, --active/--inactive, --max-budget, "
                               "--cost-alert-threshold, --budget-period")
    reply = client(ctx).call("PATCH", f"/manage/projects/{project_id}", body=body)
    emit(reply.body, as_json=as_json, text=project_fields(reply.body))


@leaf(project, "deactivate")
@click.argument("project_id")
@click.option("--revoke-tokens", is_flag=True, help="Also revoke every token of the project.")
@json_option
def project_deactivate(ctx: click.Context, project_id: str, revoke_tokens: bool, as_json: bool) -> None:
    """Deactivate a project: its tokens stop working on the proxy (403 project_inactive)."""
    body: dict[str, Any] = {"is_active": False}
    if revoke_tokens:
        body["revoke_tokens"] = True
    reply = client(ctx).call("PATCH", f"/manage/projects/{project_id}", body=body)
    emit(reply.body, as_json=as_json, text=project_fields(reply.body))


def _created_text(created: dict[str, Any]) -> str:
    limit = created.get("max_requests")
    return fields([
        ("Token", created["token"]), ("Obfuscated", created.get("token_hint", "")),
        ("ID", created["id"]), ("Project", created["project_id"]),
        ("Expires at", when(created.get("expires_at"))),
        ("Max requests", limit if limit is not None else "unlimited"),
    ]) + "\nKeep the token now: it is not shown again."


@leaf(token, "create")
@click.option("--project-id", required=True, help="Project the token belongs to.")
@click.option("--duration", type=click.IntRange(1, 525600), default=1440, show_default=True,
              help="Lifetime in minutes (max 525600 = 365 days).")
@click.option("--max-requests", type=click.IntRange(min=0), help="Lifetime request quota (0: unlimited).")
@click.option("--metadata", type=JsonObject(), help='JSON object, e.g. \'{"user_id": "alice"}\'.')
@spend_options
@json_option
def token_create(ctx: click.Context, project_id: str, duration: int, max_requests: int | None,
                 metadata: dict[str, Any] | None, max_budget: Any, cost_alert_threshold: Any,
                 budget_period: str | None, as_json: bool) -> None:
    """Issue a token; the secret is printed once."""
    body: dict[str, Any] = {"project_id": project_id, "duration_minutes": duration,
                            **_spend_body(max_budget, cost_alert_threshold, budget_period)}
    if max_requests is not None:
        body["max_requests"] = max_requests
    if metadata is not None:
        body["metadata"] = metadata
    reply = client(ctx).call("POST", "/manage/tokens", body=body)
    emit(reply.body, as_json=as_json, text=_created_text(reply.body))


# The predecessor's name for `token create`.
token.add_command(copy.copy(token_create), "generate")
token.commands["generate"].hidden = True


@leaf(token, "list")
@click.option("--project-id", help="Only this project's tokens.")
@paging
@json_option
def token_list(ctx: click.Context, project_id: str | None, page: int | None, page_size: int | None,
               active_only: bool, as_json: bool) -> None:
    """List tokens, newest first (secrets are shown obfuscated)."""
    params = _paging_params(page, page_size, active_only)
    if project_id:
        params["project_id"] = project_id
    reply = client(ctx).call("GET", "/manage/tokens", params=params)
    _listing(reply, as_json, token_table, "tokens")


@leaf(token, "get")
@click.argument("token_id")
@json_option
def token_get(ctx: click.Context, token_id: str, as_json: bool) -> None:
    """Show one token with its usage."""
    reply = client(ctx).call("GET", f"/manage/tokens/{token_id}")
    emit(reply.body, as_json=as_json, text=token_fields(reply.body))


@leaf(token, "update")
@click.argument("token_id")
@click.option("--max-requests", type=click.IntRange(min=0), help="New quota (0: unlimited).")
@click.option("--active/--inactive", "is_active", default=None, help="Reactivate or deactivate.")
@click.option("--metadata", type=JsonObject(), help="Replace the metadata (JSON object).")
@spend_options
@json_option
def token_update(ctx: click.Context, token_id: str, max_requests: int | None, is_active: bool | None,
                 metadata: dict[str, Any] | None, max_budget: Any, cost_alert_threshold: Any,
                 budget_period: str | None, as_json: bool) -> None:
    """Change a token's quota, activity, metadata, budget or alert threshold."""
    body = {k: v for k, v in {"max_requests": max_requests, "is_active": is_active,
                              "metadata": metadata}.items() if v is not None}
    body |= _spend_body(max_budget, cost_alert_threshold, budget_period)
    if not body:
        raise click.UsageError("give at least one of --max-requests, --active/--inactive, --metadata, "
                               "--max-budget, --cost-alert-threshold, --budget-period")
    reply = client(ctx).call("PATCH", f"/manage/tokens/{token_id}", body=body)
    emit(reply.body, as_json=as_json, text=token_fields(reply.body))


@leaf(token, "revoke")
@click.argument("token_id")
@json_option
def token_revoke(ctx: click.Context, token_id: str, as_json: bool) -> None:
    """Revoke a token (revoking twice is fine)."""
    client(ctx).call("DELETE", f"/manage/tokens/{token_id}")
    emit({"id": token_id, "revoked": True}, as_json=as_json, text=f"Token {token_id} revoked.")


@leaf(token, "revoke-project")
@click.argument("project_id")
@json_option
def token_revoke_project(ctx: click.Context, project_id: str, as_json: bool) -> None:
    """Revoke every token of a project."""
    reply = client(ctx).call("POST", f"/manage/projects/{project_id}/tokens/revoke")
    counts = reply.body
    text = (f"Revoked {counts['revoked_count']} of {counts['total_tokens']} tokens "
            f"({counts['already_revoked_count']} were already revoked).")
    emit(counts, as_json=as_json, text=text)


manage.add_command(cache)
