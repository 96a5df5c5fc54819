"""Metrics, cost and telemetry events of a real proxy in front of the mock upstream."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_proxy import telemetry
from llm_proxy.telemetry.cost import PriceTable
from llm_proxy.telemetry.events import EVENT_NAMES
from llm_proxy.telemetry.logs import JsonFormatter
from tests.live import LiveProxy, running_proxy
from tests.services import require_tool

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count these four words"}]}
STOP_MEASUREMENTS = {"duration", "upstream_duration", "overhead", "time_to_first_byte", "input_tokens",
                     "output_tokens", "cached_tokens", "reasoning_tokens", "cost_usd"}
STOP_METADATA = {"request_id", "method", "path", "status", "provider", "model", "stream", "project_id", "token_id",
                 "user_id", "cache_status", "error_code", "upstream_error", "client_disconnected", "trace_id",
                 "usage_known", "response_body", "content_type", "event", "context", "reason"}


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    telemetry.attach_many("test-live", EVENT_NAMES, lambda n, m, md, c: seen.append((n, dict(m), dict(md))))
    yield seen
    telemetry.detach("test-live")


async def call(live: LiveProxy, token: str, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with live.http.post(f"{live.url}/v1/chat/completions", json=body or CHAT,
                              headers={"Authorization": f"Bearer {token}", **(headers or {})}) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def scrape(live: LiveProxy, suffix: str = "", **headers: str) -> tuple[int, bytes]:
    return await scrape_path(live, f"/metrics{suffix}", **headers)


async def scrape_path(live: LiveProxy, path: str, **headers: str) -> tuple[int, bytes]:
    async with live.http.get(f"{live.url}{path}", headers=headers) as resp:
        return resp.status, await resp.read()


def prometheus_samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def promtool_problems(text: bytes) -> str:
    """What `promtool check metrics` objects to (lint included); "" when content."""
    require_tool("promtool", ".ci/run fetches it")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30,
                           check=False)
    return "" if check.returncode == 0 else (check.stdout + check.stderr).decode()


def price(usage: dict[str, Any]) -> float:
    cost = PriceTable().price("openai", "gpt-4o-mini", usage["prompt_tokens"], usage["completion_tokens"],
                              usage["prompt_tokens_details"]["cached_tokens"],
                              usage["completion_tokens_details"]["reasoning_tokens"])
    assert cost is not None
    return cost.total


def stream_usage(body: bytes) -> dict[str, Any]:
    frames = [orjson.loads(line[5:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    return next(frame["usage"] for frame in frames if frame.get("usage"))


class TestLiveMetrics:
    async def test_a_known_request_mix_is_counted_and_priced(self, tmp_path: Path, events: list[Any]) -> None:
        async with running_proxy(tmp_path) as live:
            _, token = await live.project_token()
            usages = []
            for _ in range(2):
                status, _, body = await call(live, token, headers={"X-Mock-Cached-Tokens": "2",
                                                             "X-Mock-Reasoning-Tokens": "3"})
                assert status == 200
                usages.append(orjson.loads(body)["usage"])
            stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
            status, _, body = await call(live, token, stream)
            usages.append(stream_usage(body))
            assert (await call(live, token, headers={"X-Mock-Status": "500"}))[0] == 500
            assert (await call(live, "wrong-token"))[0] == 401
            _, text = await scrape(live, "/prometheus")
            _, json_body = await scrape(live)
        found = prometheus_samples(text)
        labels = {("provider", "openai"), ("model", "gpt-4o-mini")}
        assert found[("llm_proxy_requests_total", frozenset({*labels, ("code", "200")}))] == 3
        assert found[("llm_proxy_requests_total", frozenset({*labels, ("code", "500")}))] == 1
        assert found[("llm_proxy_auth_rejections_total", frozenset({("reason", "invalid_token")}))] == 1
        assert found[("llm_proxy_time_to_first_token_seconds_count", frozenset(labels))] == 1
        tokens = {dict(k[1])["type"]: v for k, v in found.items() if k[0] == "llm_proxy_tokens_total"}
        input_tokens = sum(u["prompt_tokens"] for u in usages)
        cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
        reasoning = sum(u["completion_tokens_details"]["reasoning_tokens"] for u in usages)
        output = sum(u["completion_tokens"] for u in usages)
        assert tokens == {"input": input_tokens, "output": output, "cached": cached, "reasoning": reasoning}
        assert cached == 4
        assert reasoning == 6
        expected_cost = sum(price(u) for u in usages)
        assert found[("llm_proxy_cost_usd_total", frozenset(labels))] == pytest.approx(expected_cost)
        summary = orjson.loads(json_body)
        assert {k: summary[k] for k in ("request_count", "error_count", "auth_rejections", "cached_tokens",
                                        "reasoning_tokens", "events_published", "workers")} == {
            "request_count": 5, "error_count": 2, "auth_rejections": 1, "cached_tokens": 4, "reasoning_tokens": 6,
            "events_published": 5, "workers": 1}
        assert summary["cost_usd"] == pytest.approx(expected_cost)
        priced = [e for e in events if e[0] == "llm_proxy.proxy.request.stop" and e[2]["status"] == 200]
        assert sum(e[2]["event"].cost_usd for e in priced) == pytest.approx(expected_cost)
        assert all(e[2]["event"].cost_known for e in priced)
        assert await asyncio.to_thread(promtool_problems, text) == ""

    async def test_handlers_receive_the_documented_events_and_measurements(
            self, tmp_path: Path, events: list[Any]) -> None:
        async with running_proxy(tmp_path) as live:
            _, token = await live.project_token(max_requests=1)
            assert (await call(live, token))[0] == 200
            assert (await call(live, token))[0] == 429
        published = sum(e[1]["count"] for e in events if e[0] == "llm_proxy.bus.published")
        assert published == 2, "bus counts are emitted batched, once per refresh"
        events = [e for e in events if not e[0].startswith("llm_proxy.bus.")]
        names = [e[0] for e in events]
        assert names[:6] == ["llm_proxy.proxy.request.start", "llm_proxy.auth.start", "llm_proxy.auth.stop",
                             "llm_proxy.upstream.request.start", "llm_proxy.upstream.request.stop",
                             "llm_proxy.cost.calculated"]
        assert names[6:] == ["llm_proxy.proxy.request.stop", "llm_proxy.proxy.request.start",
                             "llm_proxy.auth.start", "llm_proxy.auth.exception", "llm_proxy.rate_limit.exceeded",
                             "llm_proxy.proxy.request.stop"]
        first_stop, last_stop = events[6], events[-1]
        assert set(first_stop[1]) == STOP_MEASUREMENTS
        assert set(first_stop[2]) == STOP_METADATA
        assert first_stop[1]["duration"] >= first_stop[1]["upstream_duration"] > 0
        assert first_stop[1]["cost_usd"] == pytest.approx(events[5][1]["cost_usd"])
        assert set(events[5][1]) == {"cost_usd", "input", "cached_input", "output", "reasoning"}
        assert events[9][2]["code"] == "rate_limit_exceeded"
        assert events[10][2]["reason"] == "rate_limit_exceeded"
        assert (last_stop[2]["status"], last_stop[2]["error_code"], last_stop[2]["usage_known"]) == (
            429, "rate_limit_exceeded", False)

    async def test_responses_carry_overhead_and_upstream_times(self, tmp_path: Path) -> None:
        async with running_proxy(tmp_path) as live:
            _, token = await live.project_token()
            _, headers, _ = await call(live, token, headers={"X-Mock-Latency-Ms": "40"})
            _, rejected, _ = await call(live, "wrong")
        assert float(headers["X-LLM-Proxy-Upstream-Ms"]) >= 40
        assert 0 <= float(headers["X-LLM-Proxy-Overhead-Ms"]) < 1000
        assert "X-LLM-Proxy-Upstream-Ms" not in rejected
        assert float(rejected["X-LLM-Proxy-Overhead-Ms"]) >= 0


class TestEndpoints:
    async def test_a_metrics_token_protects_both_endpoints(self, tmp_path: Path) -> None:
        async with running_proxy(tmp_path, env={"METRICS_TOKEN": "m-secret"}) as live:
            assert (await scrape(live))[0] == 401
            assert (await scrape(live, "/prometheus", Authorization="Bearer wrong"))[0] == 401
            assert (await scrape(live, "/prometheus", Authorization="Bearer m-secret"))[0] == 200
            assert (await scrape(live, Authorization="Bearer m-secret"))[0] == 200

    async def test_metrics_can_be_turned_off_or_moved(self, tmp_path: Path) -> None:
        async with running_proxy(tmp_path / "off", env={"ENABLE_METRICS": "false"}) as live:
            assert (await scrape(live))[0] == 404
        async with running_proxy(tmp_path / "moved", env={"METRICS_PATH": "/internal/stats"}) as live:
            status, text = await scrape_path(live, "/internal/stats/prometheus")
        assert status == 200
        assert b"llm_proxy_uptime_seconds" in text

    async def test_telemetry_handlers_setting_installs_custom_handlers(self, tmp_path: Path) -> None:
        from tests.telemetry import custom_handlers

        env = {"TELEMETRY_HANDLERS": "tests.telemetry.custom_handlers:install"}
        try:
            async with running_proxy(tmp_path, env=env) as live:
                _, token = await live.project_token()
                _, headers, _ = await call(live, token)
        finally:
            telemetry.detach("slow-calls")
        assert headers["X-Request-ID"] in custom_handlers.SLOW_CALLS

    async def test_no_secret_reaches_metrics_events_or_logs(self, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
        telemetry.attach_default_logger(logging.DEBUG)
        try:
            with caplog.at_level(logging.DEBUG, logger="llm_proxy"):
                async with running_proxy(tmp_path, env={"METRICS_PROJECT_LABELS": "true"}) as live:
                    _, token = await live.project_token()
                    await call(live, token)
                    await call(live, token, {**CHAT, "stream": True})
                    _, text = await scrape(live, "/prometheus")
                    _, summary = await scrape(live)
        finally:
            telemetry.detach(telemetry.DEFAULT_LOGGER_ID)
        logs = "\n".join(JsonFormatter().format(r) for r in caplog.records if r.name.startswith("llm_proxy"))
        assert "llm_proxy.proxy.request.stop" in logs
        for secret in (token, "sk-mock-upstream-key"):
            assert secret not in logs
            assert secret.encode() not in text
            assert secret.encode() not in summary
