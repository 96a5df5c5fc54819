"""HTTP client and output rendering of `llm-proxy manage` (the management API over aiohttp)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import click

from llm_proxy.errors import LlmProxyError

TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class ManageError(LlmProxyError):
    """A failed management call, shown as one line before exiting 1."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


def _error_text(status: int, text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        message = " ".join(text.split())[:200] or "no details"
    return f"HTTP {status}: {message}"


class ManageClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": "llm-proxy-manage"}

    def call(self, method: str, path: str, *, body: Any = None,
             params: Mapping[str, str] | None = None) -> Reply:
        return asyncio.run(self._call(method, path, body, params))

    async def _call(self, method: str, path: str, body: Any,
                    params: Mapping[str, str] | None) -> Reply:
        url = self.base_url + path
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT, headers=self._headers) as session, \
                    session.request(method, url, json=body, params=params) as response:
                text = await response.text()
                if response.status >= 400:
                    raise ManageError(_error_text(response.status, text))
                decoded = json.loads(text) if text else None
                return Reply(response.status, decoded, dict(response.headers))
        except aiohttp.ClientConnectorError as exc:
            error = exc.os_error
            code = error.errno or 0
            reason = os.strerror(code) if code > 0 else error.strerror or str(error)
            raise ManageError(
                f"cannot connect to the management API at {self.base_url} ({reason}); "
                "is the server running?"
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise ManageError(f"lost the connection to {self.base_url}: {exc}") from None
        except TimeoutError:
            raise ManageError(f"the management API at {self.base_url} did not answer in time") from None
        except ValueError as exc:
            raise ManageError(f"the management API answered something that is not JSON: {exc}") from None


# --- rendering ----------------------------------------------------------------------------------

def when(value: Any) -> str:
    """`2025-01-31T10:20:30.123Z` → `2025-01-31 10:20` (the predecessor's table format)."""
    if not isinstance(value, str) or len(value) < 16:
        return "-" if value is None else str(value)
    return f"{value[:10]} {value[11:16]}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
             for line in (headers, *rows)]
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(label) for label, _ in pairs) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in pairs)


def quota(token: Mapping[str, Any]) -> str:
    limit = token.get("max_requests")
    return f"{token.get('request_count', 0)}/{limit if limit is not None else 'unlimited'}"


def usd(value: Any) -> str:
    return "none" if value is None else f"${value:g}"


def spend_fields(record: Mapping[str, Any]) -> list[tuple[str, Any]]:
    period = record.get("budget_period", "monthly")
    return [("Budget", f"{usd(record.get('max_budget'))} {period}"),
            ("Alert at", usd(record.get("cost_alert_threshold"))),
            ("Spent", f"${record.get('spend_usd', 0.0):.6f} this period")]


def project_table(projects: Sequence[Mapping[str, Any]]) -> str:
    rows = [[p["id"], p["name"], p["api_key"], "yes" if p["is_active"] else "no",
             when(p["created_at"]), when(p["updated_at"])] for p in projects]
    return table(["ID", "Name", "API Key", "Active", "Created", "Updated"], rows)


def project_fields(project: Mapping[str, Any]) -> str:
    return fields([
        ("ID", project["id"]), ("Name", project["name"]), ("API Key", project["api_key"]),
        ("Active", "yes" if project["is_active"] else "no"),
        ("Deactivated", when(project.get("deactivated_at"))),
        ("Created", when(project["created_at"])), ("Updated", when(project["updated_at"])),
        *spend_fields(project),
    ])


def token_table(tokens: Sequence[Mapping[str, Any]]) -> str:
    rows = [[t["id"], t["project_id"], t["token"], "yes" if t["is_active"] else "no", quota(t),
             when(t.get("expires_at")), when(t.get("last_used_at"))] for t in tokens]
    return table(["ID", "Project", "Token", "Active", "Requests", "Expires", "Last used"], rows)


def token_fields(token: Mapping[str, Any]) -> str:
    return fields([
        ("ID", token["id"]), ("Project", token["project_id"]), ("Token", token["token"]),
        ("Active", "yes" if token["is_active"] else "no"), ("Requests", quota(token)),
        ("Cache hits", token.get("cache_hit_count", 0)), ("Expires", when(token.get("expires_at"))),
        ("Created", when(token.get("created_at"))), ("Last used", when(token.get("last_used_at"))),
        ("Deactivated", when(token.get("deactivated_at"))),
        ("Metadata", json.dumps(token.get("metadata") or {}, sort_keys=True)),
        *spend_fields(token),
    ])


def page_footer(reply: Reply, shown: int) -> str:
    total = reply.headers.get("X-Total-Count", str(shown))
    page = reply.headers.get("X-Page", "1")
    return f"{shown} shown, {total} in total (page {page})"


def emit(data: Any, *, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)
