"""Budgets, alerts and `X-LLM-Proxy-Cost` on a real proxy in front of the mock upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from llm_proxy import telemetry
from llm_proxy.cli.manage import manage
from tests.live import LiveProxy, running_proxy

WORDS = "one two three four five"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": WORDS}]}
CALL_USD = (5 * 0.15 + 5 * 0.60) / 1e6
"""gpt-4o-mini: $0.15/M input, $0.60/M output; the mock answers 5 prompt and 5 completion tokens."""
FAST_FLUSH = {"SPEND_FLUSH_INTERVAL": "50ms"}


@pytest.fixture
def alerts() -> Iterator[list[tuple[dict[str, Any], dict[str, Any]]]]:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    telemetry.attach("test-budget-alerts", "llm_proxy.cost.threshold_exceeded",
                     lambda _n, m, md, _c: seen.append((dict(m), dict(md))))
    yield seen
    telemetry.detach("test-budget-alerts")


async def chat(live: LiveProxy, token: str, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with live.http.post(f"{live.url}/v1/chat/completions", json=body or CHAT,
                              headers={"Authorization": f"Bearer {token}", **(headers or {})}) as resp:
        raw = await resp.read()
        document = json.loads(raw) if resp.content_type == "application/json" else raw
        return resp.status, resp.headers.copy(), document


async def manage_api(live: LiveProxy, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with live.http.request(method, f"{live.url}/manage{path}", json=body,
                                 headers=live.manage_headers) as resp:
        return resp.status, await resp.json()


async def settled(live: LiveProxy, path: str, expected: float) -> dict[str, Any]:
    """The record once its spend_usd reached `expected` (the proxy writes spend every 50 ms here)."""
    async with asyncio.timeout(5):
        while True:
            status, record = await manage_api(live, "GET", path)
            assert status == 200, record
            if record["spend_usd"] >= expected - 1e-12:
                return record
            await asyncio.sleep(0.02)


class TestCostHeader:
    async def test_non_streamed_answers_carry_their_price_and_streams_do_not(self, tmp_path: Path) -> None:
        async with running_proxy(tmp_path) as live:
            _, token = await live.project_token()

            status, headers, body = await chat(live, token, headers={"X-Mock-Cached-Tokens": "2",
                                                                      "X-Mock-Reasoning-Tokens": "3"})
            streamed = await chat(live, token, {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
            unpriced = await chat(live, token, {**CHAT, "model": "no-such-model-xyz"})

        assert status == 200
        usage = body["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (5, 8)
        # 3 uncached input at $0.15/M, 2 cached at $0.075/M, 8 output (3 reasoning) at $0.60/M.
        assert headers["X-LLM-Proxy-Cost"] == "0.0000054"
        assert float(headers["X-LLM-Proxy-Upstream-Ms"]) >= 0
        assert streamed[0] == 200 and b'"usage"' in streamed[2]
        assert "X-LLM-Proxy-Cost" not in streamed[1]
        assert unpriced[0] == 200 and "X-LLM-Proxy-Cost" not in unpriced[1]


class TestSpendCounting:
    async def test_a_stream_longer_than_the_capture_is_counted_from_its_last_frames(self, tmp_path: Path) -> None:
        env = {**FAST_FLUSH, "OBSERVABILITY_MAX_RESPONSE_BODY_BYTES": "1024"}
        async with running_proxy(tmp_path, env) as live:
            project, token = await live.project_token()
            body = {**CHAT, "max_tokens": 300, "stream": True, "stream_options": {"include_usage": True}}
            status, _, raw = await chat(live, token, body)
            read = await settled(live, f"/projects/{project['id']}", (5 * 0.15 + 300 * 0.60) / 1e6)

        assert status == 200 and len(raw) > 4 * 1024
        assert read["spend_usd"] == pytest.approx((5 * 0.15 + 300 * 0.60) / 1e6)


class TestBudgetsLive:
    async def test_budget_threshold_and_spend_through_the_management_api(
        self, tmp_path: Path, alerts: list[tuple[dict[str, Any], dict[str, Any]]],
    ) -> None:
        async with running_proxy(tmp_path, FAST_FLUSH) as live:
            status, project = await manage_api(live, "POST", "/projects", {
                "name": "budgeted", "api_key": "sk-mock-upstream-key", "max_budget": 3.5 * CALL_USD,
                "cost_alert_threshold": 1.5 * CALL_USD, "budget_period": "daily"})
            token = await live.create_token(project["id"])

            results = await asyncio.gather(*(chat(live, token) for _ in range(20)))
            read = await settled(live, f"/projects/{project['id']}", 3.5 * CALL_USD)
            audit = await audited(live, "cost.threshold_exceeded")

        assert status == 201
        assert (project["max_budget"], project["budget_period"], project["spend_usd"]) == (
            3.5 * CALL_USD, "daily", 0.0)
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] * 4 + [429] * 16, "the 4th call is the one allowed past the budget"
        refusal = next(body for status, _, body in results if status == 429)
        assert refusal["error"]["code"] == "budget_exceeded"
        assert refusal["error"]["type"] == "insufficient_quota"
        assert read["spend_usd"] == pytest.approx(4 * CALL_USD)
        [(measurements, metadata)] = alerts
        assert measurements["threshold_usd"] == pytest.approx(1.5 * CALL_USD)
        assert (metadata["scope"], metadata["project_id"], metadata["period"]) == (
            "project", project["id"], "daily")
        [entry] = audit
        assert (entry["actor"], entry["project_id"], entry["outcome"]) == ("system", project["id"], "success")

    async def test_settings_round_trip_validation_and_the_cli(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.chdir(tmp_path)
        async with running_proxy(tmp_path, FAST_FLUSH) as live:
            project, token = await live.project_token(max_budget=1.0, budget_period="weekly")
            patches = [await manage_api(live, "PATCH", f"/projects/{project['id']}", change) for change in (
                {"max_budget": 2.5, "cost_alert_threshold": 1}, {"max_budget": None}, {"max_budget": -1},
                {"budget_period": "yearly"}, {"budget_period": None}, {"cost_alert_threshold": "5"},
                {"max_budget": True},
            )]
            _, [listed] = await manage_api(live, "GET", f"/tokens?project_id={project['id']}")
            status, _, _ = await chat(live, token)
            token_read = await settled(live, f"/tokens/{listed['id']}", CALL_USD)
            cli = await asyncio.to_thread(run_cli, live, "project", "update", project["id"], "--max-budget", "none",
                                          "--budget-period", "total", "--cost-alert-threshold", "0.5", "--json")
            _, project_read = await manage_api(live, "GET", f"/projects/{project['id']}")

        (ok, first), (cleared_status, cleared) = patches[:2]
        assert (ok, first["max_budget"], first["cost_alert_threshold"]) == (200, 2.5, 1.0)
        assert (cleared_status, cleared["max_budget"], cleared["cost_alert_threshold"]) == (200, None, 1.0)
        assert [status for status, _ in patches[2:]] == [400] * 5
        assert patches[2][1]["error"] == "max_budget must be >= 0"
        assert (listed["max_budget"], listed["budget_period"], listed["cost_alert_threshold"]) == (1.0, "weekly", None)
        assert status == 200
        assert token_read["spend_usd"] == pytest.approx(CALL_USD)
        assert cli.exit_code == 0, cli.output
        assert json.loads(cli.stdout)["budget_period"] == "total"
        assert (project_read["max_budget"], project_read["cost_alert_threshold"]) == (None, 0.5)
        assert project_read["spend_usd"] == pytest.approx(CALL_USD)


async def audited(live: LiveProxy, action: str) -> list[dict[str, Any]]:
    """The audit entries of `action` once there are some (the recorder writes in batches)."""
    async with asyncio.timeout(5):
        while True:
            status, page = await manage_api(live, "GET", f"/audit?action={action}")
            assert status == 200, page
            if page["events"]:
                events: list[dict[str, Any]] = page["events"]
                return events
            await asyncio.sleep(0.02)


def run_cli(live: LiveProxy, *args: str) -> Any:
    env = {"MANAGEMENT_TOKEN": live.management_token, "MANAGEMENT_API_BASE_URL": live.url}
    return CliRunner().invoke(manage, list(args), env=env)
