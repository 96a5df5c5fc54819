"""The results table and the ratios of one run: ratios, not absolute numbers, are compared."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MODES = ("chat", "stream")
# Issue 2 "Done means": llm-proxy vs the bare pass-through, in the same run.
RPS_RATIO_TARGET = 0.60
RPS_RATIO_AT = 10
ADDED_P50_TARGET_MS = 1.0
TTFB_TARGET_MS = 1.0
# Issue 5: cache hits (rows named proxy-cache*) vs the uncached `proxy` row of the same run.
CACHE_PREFIX = "proxy-cache"
CACHE_RATIO_TARGET = 2.0
CACHE_TARGET_ROW = "proxy-cache"


@dataclass(frozen=True)
class Cell:
    mode: str
    concurrency: int
    target: str
    result: dict[str, Any]

    def _ms(self, key: str, stat: str) -> float:
        block = self.result.get(key)
        return float(block[stat]) if block else math.nan

    @property
    def rps(self) -> float:
        return float(self.result["requests_per_second"])

    @property
    def p50(self) -> float:
        return self._ms("latency", "p50_ms")

    @property
    def p99(self) -> float:
        return self._ms("latency", "p99_ms")

    @property
    def ttfb_p50(self) -> float:
        return self._ms("ttfb", "p50_ms")

    @property
    def cpu_per_call(self) -> float:
        return float(self.result.get("cpu_us_per_call", math.nan))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "concurrency": self.concurrency, "target": self.target,
                **self.result}


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def table(cells: list[Cell]) -> str:
    head = ("mode", "c", "target", "RPS", "p50 ms", "p99 ms", "TTFB p50 ms", "CPU µs/call", "ok", "failed")
    rows = [(c.mode, str(c.concurrency), c.target, _fmt(c.rps, 1), _fmt(c.p50), _fmt(c.p99),
             _fmt(c.ttfb_p50) if c.mode == "stream" else "", _fmt(c.cpu_per_call, 0), str(c.result["success"]),
             str(c.result["failed"])) for c in sorted(cells, key=_order(cells))]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    left = {0, 2}

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) if i in left else v.rjust(w)
                                 for i, (v, w) in enumerate(zip(row, widths, strict=True))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i not in left else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def _order(cells: list[Cell]) -> Any:
    targets = list(dict.fromkeys(c.target for c in cells))
    return lambda c: (MODES.index(c.mode), c.concurrency, targets.index(c.target))


def _find(cells: list[Cell], mode: str, concurrency: int, target: str) -> Cell | None:
    for cell in cells:
        if (cell.mode, cell.concurrency, cell.target) == (mode, concurrency, target):
            return cell
    return None


def _diff(cells: list[Cell], mode: str, c: int, proxy: str, ref: str, attr: str) -> float | None:
    mine, theirs = _find(cells, mode, c, proxy), _find(cells, mode, c, ref)
    if mine is None or theirs is None:
        return None
    value = float(getattr(mine, attr)) - float(getattr(theirs, attr))
    return None if math.isnan(value) else round(value, 3)


def _ratio(cells: list[Cell], mode: str, c: int, proxy: str, ref: str = "passthrough") -> float | None:
    mine, floor = _find(cells, mode, c, proxy), _find(cells, mode, c, ref)
    if mine is None or floor is None or floor.rps <= 0:
        return None
    return round(mine.rps / floor.rps, 3)


def _below(value: float | None, limit: float, applies: bool) -> bool | None:
    return None if value is None or not applies else value < limit


def ratios(cells: list[Cell], proxies: list[str], concurrencies: list[int]) -> dict[str, Any]:
    """Per llm-proxy row: RPS ratios to the pass-through, added latency and TTFB at the lowest
    concurrency; `targets_met` is None where the run lacks the cells a target is defined on."""
    low = min(concurrencies)
    out: dict[str, Any] = {}
    for proxy in proxies:
        rps = {mode: {str(c): _ratio(cells, mode, c, proxy) for c in concurrencies}
               for mode in MODES}
        added = {ref: _diff(cells, "chat", low, proxy, ref, "p50")
                 for ref in ("passthrough", "direct")}
        ttfb = {ref: _diff(cells, "stream", low, proxy, ref, "ttfb_p50")
                for ref in ("passthrough", "direct")}
        at = rps["chat"].get(str(RPS_RATIO_AT))
        out[proxy] = {
            "rps_vs_passthrough": rps,
            f"added_p50_ms_at_c{low}": added,
            f"stream_ttfb_p50_diff_ms_at_c{low}": ttfb,
            **_cache_ratios(cells, proxy, concurrencies),
            "targets_met": {
                f"chat_rps_ratio_at_c{RPS_RATIO_AT}_ge_{RPS_RATIO_TARGET}":
                    None if at is None else at >= RPS_RATIO_TARGET,
                f"added_p50_at_c1_lt_{ADDED_P50_TARGET_MS}ms":
                    _below(added["passthrough"], ADDED_P50_TARGET_MS, low == 1),
                f"stream_ttfb_at_c1_within_{TTFB_TARGET_MS}ms":
                    _below(ttfb["passthrough"], TTFB_TARGET_MS + 1e-9, low == 1),
            },
        }
    return out


def _cache_ratios(cells: list[Cell], proxy: str, concurrencies: list[int]) -> dict[str, Any]:
    """For cache-hit rows: RPS / the uncached `proxy` row's RPS, per mode and concurrency."""
    if not proxy.startswith(CACHE_PREFIX):
        return {}
    rps = {mode: {str(c): _ratio(cells, mode, c, proxy, "proxy") for c in concurrencies} for mode in MODES}
    values = [v for c in concurrencies if c > 1 and (v := rps["chat"][str(c)]) is not None]
    met = None if proxy != CACHE_TARGET_ROW or not values else min(values) >= CACHE_RATIO_TARGET
    return {"rps_vs_uncached_proxy": rps, "cache_target_met": met}


def _cache_lines(r: dict[str, Any], concurrencies: list[int]) -> list[str]:
    lines = []
    for mode in MODES:
        values = [r["rps_vs_uncached_proxy"][mode][str(c)] for c in concurrencies]
        if any(v is not None for v in values):
            cols = ", ".join(f"c={c}: " + ("n/a" if v is None else f"{v:.2f}")
                             for c, v in zip(concurrencies, values, strict=True))
            verdict = ""
            if mode == "chat" and r["cache_target_met"] is not None:
                verdict = f"  [target >= {CACHE_RATIO_TARGET:g} at c>1: " + (
                    "met]" if r["cache_target_met"] else "MISSED]")
            lines.append(f"    RPS / uncached proxy RPS ({mode}): {cols}{verdict}")
    return lines


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f} ms"


def _verdict(met: bool | None) -> str:
    return "" if met is None else ("  [meets target]" if met else "  [MISSES target]")


def _proxy_lines(r: dict[str, Any], concurrencies: list[int]) -> list[str]:
    low = min(concurrencies)
    met = list(r["targets_met"].values())
    lines = []
    for mode in MODES:
        values = [r["rps_vs_passthrough"][mode][str(c)] for c in concurrencies]
        if any(v is not None for v in values):
            cols = ", ".join(f"c={c}: " + ("n/a" if v is None else f"{v:.2f}")
                             for c, v in zip(concurrencies, values, strict=True))
            lines.append(f"    RPS / passthrough RPS ({mode}): {cols}"
                         + (_verdict(met[0]) if mode == "chat" else ""))
    for label, key, verdict in (
        (f"added p50 latency at c={low} (chat)", f"added_p50_ms_at_c{low}", met[1]),
        (f"streaming TTFB p50 at c={low}", f"stream_ttfb_p50_diff_ms_at_c{low}", met[2]),
    ):
        diff = r[key]
        if diff["passthrough"] is not None or diff["direct"] is not None:
            lines.append(f"    {label}: {_signed(diff['passthrough'])} vs passthrough, "
                         f"{_signed(diff['direct'])} vs direct{_verdict(verdict)}")
    return lines


def render_ratios(data: dict[str, Any], concurrencies: list[int]) -> str:
    lines = ["Ratios (same run; targets from issue 2 in brackets):"]
    if not data:
        lines.append("  no llm-proxy rows in this run")
    for proxy, r in data.items():
        lines += [f"  {proxy}:", *_proxy_lines(r, concurrencies)]
        if "rps_vs_uncached_proxy" in r:
            lines += _cache_lines(r, concurrencies)
    return "\n".join(lines)
