"""`llm-proxy benchmark`: send N requests at a fixed concurrency and report latency and status."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click
import orjson

from llm_proxy.loadgen import (
    Exchange,
    Progress,
    RequestSpec,
    Stats,
    Summary,
    run_requests,
    run_sync,
    summarize,
)
from llm_proxy.settings import process_environment

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _join_url(base_url: str, endpoint: str) -> str:
    return base_url.rstrip("/") + "/" + endpoint.lstrip("/")


def _body(raw: str | None, method: str, stream: bool) -> bytes | None:
    if raw is None:
        return None
    if method not in BODY_METHODS:
        raise click.UsageError(f"--json needs --method POST, PUT or PATCH (got {method})")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from exc
    if stream and isinstance(parsed, dict):
        parsed["stream"] = True
    return orjson.dumps(parsed)


def _headers(token: str, has_body: bool, cache_ttl: int | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if has_body:
        headers["Content-Type"] = "application/json"
    if cache_ttl is not None:
        headers["Cache-Control"] = f"public, max-age={cache_ttl}"
    return headers


def _ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


def _stats_rows(label: str, stats: Stats | None, when_absent: str | None) -> list[tuple[str, str]]:
    if stats is None:
        return [] if when_absent is None else [(label, when_absent)]
    return [(f"{label} {name}", _ms(getattr(stats, name)))
            for name in ("avg", "min", "max", "p50", "p90", "p99")]


def summary_rows(summary: Summary, stream: bool, cache: bool) -> list[tuple[str, str]]:
    rows = [
        ("Total requests", str(summary.total)),
        ("Concurrency", str(summary.concurrency)),
        ("Duration (s)", f"{summary.duration:.3f}"),
        ("Success", str(summary.success)),
        ("Failed", str(summary.failed)),
        ("Requests/sec", f"{summary.rps:.2f}"),
    ]
    rows += _stats_rows("Latency", summary.latency, None)
    if stream:
        rows += _stats_rows("TTFB", summary.ttfb, "N/A")
    if cache or summary.cache_hits:
        rows.append(("Cache hits", str(summary.cache_hits)))
    rows += _stats_rows("Upstream latency", summary.upstream, "N/A")
    rows += _stats_rows("Proxy latency", summary.proxy, "N/A")
    return rows


def render_table(headers: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in (0, 1)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(row: tuple[str, str]) -> str:
        return f"| {row[0]:<{widths[0]}} | {row[1]:>{widths[1]}} |"

    return "\n".join([rule, line(headers), rule, *(line(r) for r in rows), rule])


def status_rows(statuses: Mapping[int, int]) -> list[tuple[str, str]]:
    return [("Network error" if code == 0 else str(code), str(count))
            for code, count in sorted(statuses.items())]


def _debug_text(exchange: Exchange, request_headers: Mapping[str, str],
                body: bytes | None) -> str:
    shown = {k: ("Bearer [REDACTED]" if k.lower() == "authorization" else v)
             for k, v in request_headers.items()}
    label = "Network error" if exchange.status == 0 else str(exchange.status)
    lines = [f"--- sample for status {label} ---"]
    if exchange.error:
        lines.append(f"error: {exchange.error}")
    lines.append("response headers: " + json.dumps(dict(exchange.headers), indent=2))
    lines.append("response body: " + exchange.body.decode("utf-8", "replace"))
    lines.append("request headers: " + json.dumps(shown, indent=2))
    lines.append("request body: " + ("" if body is None else body.decode("utf-8", "replace")))
    return "\n".join(lines)


async def _with_progress(spec: RequestSpec, total: int, concurrency: int,
                         captures: dict[int, Exchange] | None) -> Summary:
    progress = Progress()
    interactive = sys.stderr.isatty()

    async def report() -> None:
        while True:
            await asyncio.sleep(0.2 if interactive else 2.0)
            click.echo(("\r" if interactive else "") + progress.line(), err=True,
                       nl=not interactive)

    ticker = asyncio.create_task(report())
    try:
        run = await run_requests(spec, total, concurrency, progress, captures)
    finally:
        ticker.cancel()
    click.echo(("\r" if interactive else "") + progress.line(), err=True)
    return summarize(run)


def _emit(summary: Summary, output: str, stream: bool, cache: bool,
          debug_texts: list[str]) -> None:
    if output == "json":
        data: dict[str, Any] = summary.to_dict()
        if debug_texts:
            data["debug"] = debug_texts
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(render_table(("Metric", "Value"), summary_rows(summary, stream, cache)))
    click.echo(render_table(("Status code", "Count"), status_rows(summary.statuses)))
    for text in debug_texts:
        click.echo(text)


@dataclass(frozen=True)
class Options:
    base_url: str
    endpoint: str
    token: str | None
    token_env: str
    total: int
    concurrency: int
    json_body: str | None
    method: str
    cache: bool
    cache_ttl: int
    stream: bool
    timeout: float
    output: str
    debug: bool


@click.command()
@click.option("--base-url", required=True, help="Base URL of the proxy, e.g. http://localhost:8080.")
@click.option("--endpoint", required=True,
              help="Path appended to the base URL, e.g. /v1/chat/completions.")
@click.option("--token", default=None, help="Bearer token (default: read from --token-env).")
@click.option("--token-env", default="PROXY_TOKEN", show_default=True,
              help="Environment variable holding the token when --token is not given.")
@click.option("-r", "--requests", "total", default=1, show_default=True, type=click.IntRange(min=1),
              help="Total number of requests.")
@click.option("-c", "--concurrency", default=1, show_default=True, type=click.IntRange(min=1),
              help="Requests in flight at once.")
@click.option("--json", "json_body", default=None, help="JSON request body (POST, PUT, PATCH).")
@click.option("--method", default="POST", show_default=True, help="HTTP method.")
@click.option("--cache", is_flag=True, help="Send `Cache-Control: public, max-age=<ttl>`.")
@click.option("--cache-ttl", default=86400, show_default=True, type=click.IntRange(min=0),
              help="max-age sent with --cache.")
@click.option("--stream", is_flag=True,
              help='Set "stream": true in a JSON object body and report time-to-first-byte.')
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Per-request timeout in seconds.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--debug", is_flag=True, help="Print one request/response sample per status code.")
def benchmark(**options: Any) -> None:
    """Load-test an endpoint through the proxy: RPS, latency percentiles, status codes."""
    opts = Options(**options)
    method = opts.method.upper()
    body = _body(opts.json_body, method, opts.stream)
    token = opts.token
    if token is None:
        token = process_environment().get(opts.token_env, "")
    if not token:
        click.echo(f"warning: no token (--token or ${opts.token_env}); sending no Authorization",
                   err=True)
    headers = _headers(token, body is not None, opts.cache_ttl if opts.cache else None)
    spec = RequestSpec(url=_join_url(opts.base_url, opts.endpoint), method=method, body=body,
                       headers=headers, timeout=opts.timeout)
    captures: dict[int, Exchange] = {}
    summary = run_sync(_with_progress(spec, opts.total, opts.concurrency,
                                      captures if opts.debug else None))
    texts = [_debug_text(captures[code], headers, body) for code in sorted(captures)]
    _emit(summary, opts.output, opts.stream, opts.cache, texts)
