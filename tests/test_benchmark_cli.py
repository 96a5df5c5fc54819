"""`llm-proxy benchmark` against a tiny loopback server; the harness's --help and ratio maths."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from llm_proxy.cli import cli
from llm_proxy.loadgen import percentile, split_evenly

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Upstream:
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)


def _app(upstream: Upstream) -> web.Application:
    counter = {"mixed": 0}

    async def record(request: web.Request) -> dict[str, Any]:
        entry = {"path": request.path, "method": request.method,
                 "headers": dict(request.headers), "body": await request.read()}
        upstream.seen.append(entry)
        return entry

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": True})

    async def mixed(request: web.Request) -> web.Response:
        await record(request)
        counter["mixed"] += 1
        return web.json_response({}, status=500 if counter["mixed"] % 3 == 0 else 200)

    async def hit(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({}, headers={"X-PROXY-CACHE": "HIT"})

    async def timing(request: web.Request) -> web.Response:
        entry = await record(request)
        start = int(entry["headers"]["X-REQUEST-START"])
        return web.json_response({}, headers={"X-UPSTREAM-REQUEST-START": str(start + 1000),
                                              "X-UPSTREAM-REQUEST-STOP": str(start + 2000)})

    async def stream(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(f"data: {i}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_post("/mixed", mixed)
    app.router.add_post("/hit", hit)
    app.router.add_post("/timing", timing)
    app.router.add_post("/stream", stream)
    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """The server runs on its own loop in a thread: the command under test runs its own loop."""
    state = Upstream()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(state), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield state
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def invoke(upstream: Upstream, *args: str, env: dict[str, str] | None = None) -> Any:
    upstream.seen.clear()
    result = CliRunner().invoke(cli, ["benchmark", "--base-url", upstream.url, *args], env=env)
    return result


def run_json(upstream: Upstream, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = invoke(upstream, *args, "--output", "json", env=env)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_help_lists_the_predecessors_flags() -> None:
    result = CliRunner().invoke(cli, ["benchmark", "--help"])
    assert result.exit_code == 0
    for flag in ("--base-url", "--endpoint", "--token-env", "--requests", "--concurrency",
                 "--json", "--method", "--cache-ttl", "--stream", "--output"):
        assert flag in result.output


def test_counts_every_request_and_sends_the_predecessors_headers(upstream: Upstream) -> None:
    result = invoke(upstream, "--endpoint", "/ok", "-r", "7", "-c", "3", "--token", "t0k",
                    "--json", '{"model": "m"}', "--output", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["total_requests"], data["success"], data["failed"]) == (7, 7, 0)
    assert data["status_codes"] == {"200": 7}
    assert data["concurrency"] == 3
    assert data["latency"]["count"] == 7
    assert data["latency"]["min_ms"] <= data["latency"]["p50_ms"] <= data["latency"]["max_ms"]
    assert "Requests sent: 7, completed: 7, failed: 0" in result.stderr
    assert len(upstream.seen) == 7
    for seen in upstream.seen:
        assert seen["method"] == "POST"
        assert seen["headers"]["Authorization"] == "Bearer t0k"
        assert seen["headers"]["Content-Type"] == "application/json"
        assert seen["headers"]["X-REQUEST-START"].isdigit()
        assert "Cache-Control" not in seen["headers"]
        assert json.loads(seen["body"]) == {"model": "m"}


def test_table_shows_failures_per_status_code(upstream: Upstream) -> None:
    result = invoke(upstream, "--endpoint", "mixed", "-r", "6", "--token", "t")
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1] for line in result.stdout.splitlines()
            if (cells := [c.strip() for c in line.strip("|").split("|")]) and len(cells) == 2}
    assert rows["Total requests"] == "6"
    assert rows["Success"] == "4"
    assert rows["Failed"] == "2"
    assert rows["200"] == "4"
    assert rows["500"] == "2"


def test_network_errors_count_as_failed() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = CliRunner().invoke(cli, ["benchmark", "--base-url", url, "--endpoint", "/x",
                                      "-r", "3", "--token", "t", "--output", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["success"], data["failed"]) == (0, 3)
    assert data["status_codes"] == {"0": 3}
    assert "failed: 3" in result.stderr


def test_token_from_env_cache_header_and_cache_hits(upstream: Upstream) -> None:
    data = run_json(upstream, "--endpoint", "/hit", "-r", "4", "-c", "2", "--token-env",
                    "BENCH_TOKEN", "--cache", "--cache-ttl", "60", "--json", "{}",
                    env={"BENCH_TOKEN": "from-env"})
    assert data["cache_hits"] == 4
    assert {s["headers"]["Authorization"] for s in upstream.seen} == {"Bearer from-env"}
    assert {s["headers"]["Cache-Control"] for s in upstream.seen} == {"public, max-age=60"}


def test_stream_sets_the_flag_and_reports_ttfb(upstream: Upstream) -> None:
    data = run_json(upstream, "--endpoint", "/stream", "-r", "3", "--token", "t",
                    "--stream", "--json", '{"model": "m"}')
    assert data["ttfb"]["count"] == 3
    assert data["ttfb"]["p50_ms"] <= data["latency"]["max_ms"]
    assert all(json.loads(s["body"]) == {"model": "m", "stream": True} for s in upstream.seen)


def test_upstream_stamps_split_the_latency(upstream: Upstream) -> None:
    data = run_json(upstream, "--endpoint", "/timing", "-r", "2", "--token", "t")
    assert data["upstream_latency"]["max_ms"] == pytest.approx(0.001)
    assert data["proxy_latency"]["count"] == 2


def test_get_without_body_and_debug_sample_redacts_the_token(upstream: Upstream) -> None:
    result = invoke(upstream, "--endpoint", "/ok", "--method", "get", "-r", "2",
                    "--token", "secret-token", "--debug")
    assert result.exit_code == 0, result.output
    assert [s["method"] for s in upstream.seen] == ["GET", "GET"]
    assert "--- sample for status 200 ---" in result.stdout
    assert "secret-token" not in result.stdout
    assert "Bearer [REDACTED]" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--json", "{not json"], "not valid JSON"),
    (["--json", "{}", "--method", "GET"], "--json needs --method POST"),
    (["-r", "0"], "--requests"),
])
def test_bad_input_is_a_usage_error(upstream: Upstream, args: list[str], message: str) -> None:
    result = invoke(upstream, "--endpoint", "/ok", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert upstream.seen == []


def test_split_evenly_and_percentile() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 4) == [1, 1, 0, 0]
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.9) == 7.0


def test_harness_help() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    for flag in ("--duration", "--concurrency", "--scenarios", "--quick", "--json", "--proxy-env"):
        assert flag in result.stdout


def load_harness_report(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_report", module)
    spec.loader.exec_module(module)
    return module


def test_harness_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    report = load_harness_report(monkeypatch)
    Cell, ratios = report.Cell, report.ratios

    def cell(mode: str, c: int, target: str, rps: float, p50: float, ttfb: float) -> Any:
        stats = {"p50_ms": p50, "p99_ms": p50 * 2}
        return Cell(mode, c, target, {"requests_per_second": rps, "latency": stats,
                                      "ttfb": {"p50_ms": ttfb}, "success": 1, "failed": 0})

    cells = [cell("chat", 1, "direct", 400, 0.2, 0.2), cell("chat", 1, "passthrough", 200, 0.5, 0.5),
             cell("chat", 1, "proxy", 150, 0.9, 0.9), cell("chat", 10, "passthrough", 1000, 2, 2),
             cell("chat", 10, "proxy", 500, 4, 4), cell("stream", 1, "passthrough", 100, 1, 0.6),
             cell("stream", 1, "proxy", 90, 1.2, 0.8)]
    result = ratios(cells, ["proxy"], [1, 10])["proxy"]
    assert result["rps_vs_passthrough"]["chat"] == {"1": 0.75, "10": 0.5}
    assert result["rps_vs_passthrough"]["stream"] == {"1": 0.9, "10": None}
    assert result["added_p50_ms_at_c1"] == {"passthrough": 0.4, "direct": 0.7}
    assert result["stream_ttfb_p50_diff_ms_at_c1"] == {"passthrough": 0.2, "direct": None}
    assert list(result["targets_met"].values()) == [False, True, True]
