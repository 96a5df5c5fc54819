"""The Grafana dashboard queries only metrics the proxy exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llm_proxy.telemetry.metrics import INSTRUMENTS

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "llm-proxy.json"


def test_every_queried_metric_exists_and_every_family_is_shown() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {re.sub(r"_bucket$", "", name) for e in expressions for name in re.findall(r"llm_proxy_\w+", e)}
    declared = {instrument.name for instrument in INSTRUMENTS}
    assert queried <= declared, queried - declared
    assert {"llm_proxy_requests_total", "llm_proxy_cost_usd_total", "llm_proxy_tokens_total",
            "llm_proxy_overhead_seconds", "llm_proxy_time_to_first_token_seconds",
            "llm_proxy_events_dropped_total", "llm_proxy_rate_limit_rejections_total",
            "llm_proxy_trace_calls_dropped_total"} <= queried
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
