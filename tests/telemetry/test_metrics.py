"""Metric recording and exposition: what a stop event counts, bounded labels, worker totals."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_proxy.telemetry import Telemetry
from llm_proxy.telemetry.collector import _lag_probe
from llm_proxy.telemetry.exposition import aggregate, render_json, render_prometheus
from llm_proxy.telemetry.metrics import RequestMetrics, RuntimeMetrics
from llm_proxy.telemetry.store import ValueStore, read_directory, read_store, remove_stale

STOP = "llm_proxy.proxy.request.stop"


def stop_event(status: int = 200, model: str | None = "gpt-4o-mini", **overrides: Any) -> tuple[dict[str, Any],
                                                                                                dict[str, Any]]:
    measurements = {"duration": 0.05, "upstream_duration": 0.04, "overhead": 0.01, "time_to_first_byte": 0.02,
                    "input_tokens": 10, "output_tokens": 5, "cached_tokens": 2, "reasoning_tokens": 1,
                    "cost_usd": 0.001}
    metadata = {"provider": "openai", "model": model, "status": status, "project_id": "proj-1", "stream": False,
                "usage_known": True, "error_code": None, "upstream_error": False, "cache_status": None}
    for key, value in overrides.items():
        (measurements if key in measurements else metadata)[key] = value
    return measurements, metadata


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def recorded(store: ValueStore, *events: tuple[dict[str, Any], dict[str, Any]], **options: Any) -> Any:
    telemetry = Telemetry()
    metrics = RequestMetrics(store, project_labels=options.get("project_labels", False),
                             max_model_labels=options.get("max_model_labels", 100))
    metrics.attach(telemetry, "m")
    for measurements, metadata in events:
        telemetry.execute(STOP, measurements, metadata)
    return aggregate(read_store(store))


class TestRequestMetrics:
    def test_a_known_mix_gives_the_documented_counters(self) -> None:
        totals = recorded(
            ValueStore(),
            stop_event(), stop_event(stream=True),
            stop_event(401, usage_known=False, error_code="token_expired", upstream_duration=None),
            stop_event(429, usage_known=False, error_code="rate_limit_exceeded", upstream_duration=None),
            stop_event(500, usage_known=False),
            stop_event(cache_status="hit", usage_known=False), stop_event(cache_status="stored"),
            stop_event(cache_status="bypass"), stop_event(cost_usd=None),
        )
        found = samples(render_prometheus(totals, project_labels=False))
        assert found[("llm_proxy_requests_total", (("code", "200"), ("model", "gpt-4o-mini"),
                                                   ("provider", "openai")))] == 6
        assert found[("llm_proxy_errors_total", (("code", "500"), ("provider", "openai"), ("reason", "upstream")))] == 1
        assert found[("llm_proxy_auth_rejections_total", (("reason", "token_expired"),))] == 1
        assert found[("llm_proxy_rate_limit_rejections_total", (("reason", "rate_limit_exceeded"),))] == 1
        tokens = {dict(k[1])["type"]: v for k, v in found.items() if k[0] == "llm_proxy_tokens_total"}
        assert tokens == {"input": 50, "output": 25, "cached": 10, "reasoning": 5}
        cost = found[("llm_proxy_cost_usd_total", (("model", "gpt-4o-mini"), ("provider", "openai")))]
        assert cost == pytest.approx(0.004)
        assert found[("llm_proxy_unpriced_calls_total", (("model", "gpt-4o-mini"), ("provider", "openai")))] == 1
        assert render_json(totals) | {"uptime_seconds": 0} == render_json(totals) | {
            "uptime_seconds": 0, "request_count": 9, "error_count": 3, "cache_hits": 1, "cache_misses": 1,
            "cache_stores": 1, "cache_bypass": 1, "auth_rejections": 1, "rate_limit_rejections": 1}

    def test_histograms_are_cumulative_and_count_every_observation(self) -> None:
        totals = recorded(ValueStore(), stop_event(duration=0.003), stop_event(duration=0.03),
                          stop_event(duration=500.0, stream=True))
        found = samples(render_prometheus(totals, project_labels=False))
        labels = {"model": "gpt-4o-mini", "provider": "openai"}
        bucket = "llm_proxy_request_duration_seconds_bucket"
        assert found[key(bucket, le="0.005", **labels)] == 1
        assert found[key(bucket, le="0.04", **labels)] == 2
        assert found[key(bucket, le="+Inf", **labels)] == 3
        assert found[key("llm_proxy_request_duration_seconds_count", **labels)] == 3
        assert found[key("llm_proxy_request_duration_seconds_sum", **labels)] == pytest.approx(500.033)
        assert found[key("llm_proxy_time_to_first_token_seconds_count", **labels)] == 1

    def test_model_labels_are_bounded_and_project_labels_are_opt_in(self) -> None:
        events = [stop_event(model=f"m{i}") for i in range(5)] + [stop_event(model=None)]
        plain = samples(render_prometheus(recorded(ValueStore(), *events, max_model_labels=3), False))
        models = {dict(k[1])["model"] for k in plain if k[0] == "llm_proxy_requests_total"}
        assert models == {"m0", "m1", "m2", "other", "unknown"}
        assert not any("project" in dict(k[1]) for k in plain)
        labelled = samples(render_prometheus(recorded(ValueStore(), *events, project_labels=True), True))
        projects = {dict(k[1]).get("project") for k in labelled if k[0] in ("llm_proxy_requests_total",
                                                                           "llm_proxy_cost_usd_total")}
        assert projects == {"proj-1"}
        assert not any("project" in dict(k[1]) for k in labelled if "duration" in k[0])

    def test_label_values_are_escaped(self) -> None:
        text = render_prometheus(recorded(ValueStore(), stop_event(model='a"b\\c\nd')), False)
        assert text_string_to_metric_families(text.decode())
        assert b'model="a\\"b\\\\c\\nd"' in text


class TestWorkerTotals:
    def test_counters_add_up_over_workers_and_exited_workers_keep_counting(self, tmp_path: Path) -> None:
        first = ValueStore(tmp_path, "master-1", name="w1")
        second = ValueStore(tmp_path, "master-1", name="w2")
        recorded(first, stop_event(), stop_event())
        recorded(second, stop_event())
        for store in (first, second):
            RuntimeMetrics(store, Telemetry(), None).refresh()
        assert render_json(aggregate(read_directory(tmp_path, "master-1")))["request_count"] == 3
        assert render_json(aggregate(read_directory(tmp_path, "master-1")))["workers"] == 2
        second.close()
        after = render_json(aggregate(read_directory(tmp_path, "master-1")))
        assert after["request_count"] == 3
        assert after["workers"] == 1
        first.close()

    def test_another_server_s_files_are_ignored_and_removed_once_it_exited(self, tmp_path: Path) -> None:
        other = ValueStore(tmp_path, "master-old", name="old")
        recorded(other, stop_event())
        ours = ValueStore(tmp_path, "master-new", name="new")
        assert render_json(aggregate(read_directory(tmp_path, "master-new")))["request_count"] == 0
        remove_stale(tmp_path, "master-new")
        assert (tmp_path / "old.values").exists(), "a live worker's files must stay"
        other.close()
        remove_stale(tmp_path, "master-new")
        assert not (tmp_path / "old.values").exists()
        assert (tmp_path / "new.values").exists()
        ours.close()

    def test_a_store_grows_past_its_initial_size_without_losing_values(self, tmp_path: Path) -> None:
        store = ValueStore(tmp_path, "m", name="grow")
        slots = [store.slot("llm_proxy_requests_total", ("p", f"m{i}", "200")) for i in range(5000)]
        for slot in slots:
            store.values[slot] += 1.0
        assert render_json(aggregate(read_directory(tmp_path, "m")))["request_count"] == 5000
        store.close()


async def test_the_loop_lag_probe_sees_a_stall_of_the_event_loop() -> None:
    lags: list[float] = []
    probe = asyncio.create_task(_lag_probe(lags.append))
    await asyncio.sleep(0.15)
    time.sleep(0.3)  # noqa: ASYNC251 - the point: code holding the loop
    await asyncio.sleep(0.25)
    probe.cancel()
    assert max(lags) >= 0.2
    assert sorted(lags)[len(lags) // 2] < 0.05  # otherwise it runs on time
