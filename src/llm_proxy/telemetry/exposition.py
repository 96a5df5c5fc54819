"""The metrics endpoints: `/metrics` (JSON) and `/metrics/prometheus` (text format 0.0.4).

Both add up every worker's values (see `store.py`): counters and histograms over all workers,
live or exited; gauges over live workers only, combined as each instrument says.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from llm_proxy.telemetry.metrics import INSTRUMENTS, Instrument
from llm_proxy.telemetry.store import SeriesKey, WorkerValues

PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_BY_NAME = {i.name: i for i in INSTRUMENTS}


@dataclass
class Totals:
    """Series → values, added up over the workers."""

    series: dict[SeriesKey, list[float]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels` (first slot only)."""
        instrument = _BY_NAME[name]
        wanted = [(instrument.labels.index(k), v) for k, v in labels.items()]
        return sum(values[0] for (metric, values_labels), values in self.series.items()
                   if metric == name and all(values_labels[i] == v for i, v in wanted))


def aggregate(workers: Iterable[WorkerValues]) -> Totals:
    totals: dict[SeriesKey, list[float]] = {}
    for worker in workers:
        for key, values in worker.series.items():
            instrument = _BY_NAME.get(key[0])
            if instrument is None or (instrument.kind == "gauge" and not worker.alive):
                continue
            current = totals.get(key)
            if current is None:
                totals[key] = list(values)
            else:
                totals[key] = [_combine(instrument, a, b) for a, b in zip(current, values, strict=False)]
    return Totals(totals)


def _combine(instrument: Instrument, a: float, b: float) -> float:
    if instrument.kind == "gauge" and instrument.live == "max":
        return max(a, b)
    if instrument.kind == "gauge" and instrument.live == "min":
        return min(a, b)
    return a + b


def render_prometheus(totals: Totals, project_labels: bool) -> bytes:
    by_metric: dict[str, list[tuple[tuple[str, ...], list[float]]]] = {}
    for (metric, labels), values in sorted(totals.series.items()):
        by_metric.setdefault(metric, []).append((labels, values))
    lines: list[str] = []
    for instrument in INSTRUMENTS:
        series = by_metric.get(instrument.name)
        if not series and instrument.labels:
            continue
        lines.append(f"# HELP {instrument.name} {_escape_help(instrument.help)}")
        lines.append(f"# TYPE {instrument.name} {instrument.kind}")
        names = _label_names(instrument, project_labels)
        for labels, values in series or [((), [0.0] * instrument.width)]:
            lines.extend(_samples(instrument, dict(zip(names, labels, strict=False)), values))
    return ("\n".join(lines) + "\n").encode()


def _label_names(instrument: Instrument, project_labels: bool) -> tuple[str, ...]:
    if project_labels and instrument.name in _PROJECT_LABELLED:
        return (*instrument.labels, "project")
    return instrument.labels


_PROJECT_LABELLED = frozenset({"llm_proxy_requests_total", "llm_proxy_tokens_total", "llm_proxy_cost_usd_total"})


def _samples(instrument: Instrument, labels: dict[str, str], values: list[float]) -> Iterable[str]:
    if instrument.kind != "histogram":
        yield f"{instrument.name}{_labels(labels)} {_number(values[0])}"
        return
    cumulative = 0.0
    for bound, count in zip((*instrument.buckets, math.inf), values, strict=False):
        cumulative += count
        yield f"{instrument.name}_bucket{_labels({**labels, 'le': _number(bound)})} {_number(cumulative)}"
    yield f"{instrument.name}_sum{_labels(labels)} {_number(values[-1])}"
    yield f"{instrument.name}_count{_labels(labels)} {_number(cumulative)}"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render_json(totals: Totals) -> dict[str, Any]:
    """The predecessor's fields first (same names and meaning where it had them), then ours."""
    v = totals.value
    return {
        "uptime_seconds": v("llm_proxy_uptime_seconds"),
        "request_count": int(v("llm_proxy_requests_total")),
        "error_count": int(v("llm_proxy_errors_total")),
        "cache_hits": int(v("llm_proxy_cache_hits_total")),
        "cache_misses": int(v("llm_proxy_cache_misses_total")),
        "cache_bypass": int(v("llm_proxy_cache_bypass_total")),
        "cache_stores": int(v("llm_proxy_cache_stores_total")),
        "cache_evictions": int(v("llm_proxy_cache_evictions_total")),
        "input_tokens": int(v("llm_proxy_tokens_total", type="input")),
        "output_tokens": int(v("llm_proxy_tokens_total", type="output")),
        "cached_tokens": int(v("llm_proxy_tokens_total", type="cached")),
        "reasoning_tokens": int(v("llm_proxy_tokens_total", type="reasoning")),
        "cost_usd": round(v("llm_proxy_cost_usd_total"), 9),
        "unpriced_calls": int(v("llm_proxy_unpriced_calls_total")),
        "auth_rejections": int(v("llm_proxy_auth_rejections_total")),
        "rate_limit_rejections": int(v("llm_proxy_rate_limit_rejections_total")),
        "events_published": int(v("llm_proxy_events_published_total")),
        "events_dropped": int(v("llm_proxy_events_dropped_total")),
        "events_spooled": int(v("llm_proxy_events_spooled_total")),
        "event_queue_depth": int(v("llm_proxy_event_queue_depth")),
        "workers": int(v("llm_proxy_workers")),
    }


class MetricsEndpoints:
    """Pure ASGI: answers `<path>` (JSON) and `<path>/prometheus`; optional bearer token."""

    def __init__(self, path: str, token: str, collect: Callable[[], Totals], project_labels: bool) -> None:
        self.json_path = path.rstrip("/") or "/metrics"
        self.prometheus_path = self.json_path + "/prometheus"
        self.paths = frozenset({self.json_path, self.prometheus_path})
        self._expected = f"Bearer {token}".encode() if token else None
        self._collect = collect
        self._project_labels = project_labels

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"application/json", b'{"error":"method not allowed"}', [(b"allow", b"GET")])
            return
        if self._expected is not None and not self._authorized(scope):
            await _send(send, 401, b"application/json", b'{"error":"metrics require a bearer token"}',
                        [(b"www-authenticate", b'Bearer realm="metrics"')])
            return
        totals = self._collect()
        if scope["path"] == self.prometheus_path:
            await _send(send, 200, PROMETHEUS_CONTENT_TYPE, render_prometheus(totals, self._project_labels))
        else:
            await _send(send, 200, b"application/json", orjson.dumps(render_json(totals)))

    def _authorized(self, scope: dict[str, Any]) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        assert self._expected is not None
        return hmac.compare_digest(given, self._expected)


async def _send(send: Any, status: int, content_type: bytes, body: bytes,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
