"""Benchmark llm-proxy against a bare aiohttp pass-through and the mock upstream, in one run.

Starts the mock upstream, the pass-through and one llm-proxy server per scenario on 127.0.0.1,
drives them with a load generator in its own process (targets interleaved per concurrency
level), prints one table plus ratios, and stops everything it started. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from loadworker import LEAD_IN, Endpoint, Group
from report import MODES, Cell, ratios, render_ratios, table
from targets import (
    HERE,
    LOOPBACK,
    NEEDS_REDIS,
    PROXY_SCENARIOS,
    SCENARIO_HEADERS,
    Children,
    StartError,
    Target,
    base_env,
    start_mock,
    start_passthrough,
    start_proxy,
    stop,
    tcp_up,
)

CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
}
DEFAULT_SCENARIOS = "direct,passthrough,proxy,proxy-noobs"


def _csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _pairs(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"run.py: error: expected KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument("--concurrency", default="1,10,100", help="comma-separated levels")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                        help="rows, comma-separated: direct, passthrough, "
                             + ", ".join(PROXY_SCENARIOS) + ", or a --variant name")
    parser.add_argument("--modes", default=",".join(MODES), help="chat (JSON), stream (SSE)")
    parser.add_argument("--quick", action="store_true",
                        help="1 s cells after 0.3 s warm-up (a smoke run, noisy)")
    parser.add_argument("--slices", type=int, default=None,
                        help="cut each cell's duration into this many slices taken in turn "
                             "across the targets (default: about one per second)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the sweep; each cell reports its median-RPS round")
    parser.add_argument("--proxy-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for every llm-proxy row")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="an extra llm-proxy row with this environment (also add NAME to "
                             "--scenarios, or it is appended)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.0, 0.3
    try:
        args.levels = [int(c) for c in _csv(args.concurrency)]
    except ValueError:
        parser.error(f"--concurrency: expected integers, got {args.concurrency!r}")
    args.mode_list = _csv(args.modes)
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency: give levels of at least 1")
    if not args.mode_list or not set(args.mode_list) <= set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if args.slices is None:
        args.slices = max(1, round(args.duration))
    if args.duration <= 0 or args.slices < 1 or args.warmup < 0 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--duration, --timeout, --slices and --rounds must be positive, "
                     "--warmup >= 0")
    return args


def proxy_scenarios(args: argparse.Namespace) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The rows asked for, and the environment of each llm-proxy row."""
    envs = {name: dict(env) for name, env in PROXY_SCENARIOS.items()}
    rows = _csv(args.scenarios)
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        envs[name] = _pairs(_csv(pairs))
        if name not in rows:
            rows.append(name)
    unknown = [r for r in rows if r not in envs and r not in ("direct", "passthrough")]
    if unknown:
        valid = ", ".join(["direct", "passthrough", *envs])
        raise SystemExit(f"run.py: error: unknown scenario {', '.join(unknown)} (valid: {valid})")
    return rows, envs


class LoadWorker:
    """The load generator subprocess: one JSON job in, one JSON summary out."""

    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "loadworker.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "loadworker.py")], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=sink, env=base_env(), cwd=workdir,
                start_new_session=True)

    def run(self, group: Group) -> dict[str, dict[str, Any]]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(group.to_line().encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], group.bound)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise StartError("the load generator did not answer:\n"
                             + self.log.read_text(errors="replace")[-3000:])
        result: dict[str, dict[str, Any]] = json.loads(line)
        return result


def start_targets(children: Children, rows: list[str], envs: dict[str, dict[str, str]],
                  args: argparse.Namespace, redis_keys: list[str]) -> list[Target]:
    mock = start_mock(children)
    targets = {"direct": mock}
    if "passthrough" in rows:
        targets["passthrough"] = start_passthrough(children, mock.base_url)
    common = _pairs(args.proxy_env)
    for name in rows:
        if name in targets:
            continue
        extra = common | envs[name]
        if name in NEEDS_REDIS or extra.get("LLM_PROXY_EVENT_BUS", "").startswith("redis"):
            if not tcp_up(LOOPBACK, 6379):
                print(f"skipping {name}: Redis is not reachable on {LOOPBACK}:6379",
                      file=sys.stderr)
                continue
            key = f"llm-proxy-benchmark-{secrets.token_hex(4)}"
            extra |= {"REDIS_STREAM_KEY": key, "REDIS_DEAD_LETTER_KEY": key + "-dead",
                      "REDIS_CACHE_KEY_PREFIX": key + ":cache:"}
            redis_keys += [key, key + "-dead", key + ":cache:*"]
        print(f"starting {name} ...", file=sys.stderr)
        targets[name] = start_proxy(children, name, mock.base_url, extra)
    return [targets[name] for name in rows if name in targets]


def group_for(targets: list[Target], mode: str, concurrency: int,
              args: argparse.Namespace) -> Group:
    body = CHAT_BODY | ({"stream": True} if mode == "stream" else {})
    endpoints = [Endpoint(t.name, t.base_url + "/v1/chat/completions",
                          {"Authorization": f"Bearer {t.token}", "Content-Type": "application/json",
                           **SCENARIO_HEADERS.get(t.name, {})}, t.pid) for t in targets]
    return Group(endpoints, concurrency, args.duration, args.warmup, args.slices,
                 body=json.dumps(body), timeout=args.timeout)


def sweep(worker: LoadWorker, targets: list[Target], args: argparse.Namespace) -> list[Cell]:
    plan = [(r, c, m) for r in range(args.rounds) for c in args.levels for m in args.mode_list]
    per_group = len(targets) * (args.warmup + args.duration + args.slices * LEAD_IN)
    print(f"{len(plan)} groups x {len(targets)} targets: about {len(plan) * per_group:.0f} s "
          f"of load", file=sys.stderr)
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for i, (_, c, mode) in enumerate(plan, 1):
        results = worker.run(group_for(targets, mode, c, args))
        for name, result in results.items():
            runs.setdefault((mode, c, name), []).append(result)
            latency = result["latency"] or {}
            print(f"[{i:>2}/{len(plan)}] {mode:<6} c={c:<4} {name:<12} "
                  f"{result['requests_per_second']:>9.1f} rps  p50 {latency.get('p50_ms', '-')} "
                  f"ms  failed {result['failed']}", file=sys.stderr)
    return [Cell(mode, c, name, sorted(rs, key=lambda r: r["requests_per_second"])[len(rs) // 2])
            for (mode, c, name), rs in runs.items()]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _delete_redis_keys(keys: list[str]) -> None:
    if not keys:
        return
    import redis

    client = redis.Redis(host=LOOPBACK, port=6379, socket_timeout=2)
    try:
        patterns = [k for k in keys if k.endswith("*")]
        keys = [k for k in keys if not k.endswith("*")]
        keys += [found.decode() for p in patterns for found in client.scan_iter(match=p, count=1000)]
        client.delete(*keys)
    except redis.RedisError as exc:
        print(f"could not delete Redis keys {keys}: {exc}", file=sys.stderr)
    finally:
        client.close()


def report(cells: list[Cell], targets: list[Target], args: argparse.Namespace,
           load_before: float) -> None:
    levels = args.levels
    proxies = [t.name for t in targets if t.name not in ("direct", "passthrough")]
    data = ratios(cells, proxies, levels)
    load_after = os.getloadavg()[0]
    print(table(cells))
    print()
    print(render_ratios(data, levels))
    cpus = os.cpu_count() or 1
    busy = " (above the CPU count: other work shared the machine, expect noise)" if max(
        load_before, load_after) > cpus else ""
    print(f"\nmachine: {cpus} CPUs, 1-minute load average {load_before:.1f} before "
          f"and {load_after:.1f} after the run{busy}")
    if args.json is not None:
        meta = {"duration_s": args.duration, "warmup_s": args.warmup, "slices": args.slices,
                "rounds": args.rounds, "concurrency": levels, "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_before": load_before, "load_average_after": load_after}
        args.json.write_text(json.dumps({"meta": meta, "cells": [c.to_dict() for c in cells],
                                         "ratios": data}, indent=2))
        print(f"\nwrote {args.json}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, envs = proxy_scenarios(args)
    started, load_before = time.monotonic(), os.getloadavg()[0]
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="llm-proxy-bench-"))
    children, redis_keys = Children(workdir), list[str]()
    worker: LoadWorker | None = None
    try:
        targets = start_targets(children, rows, envs, args, redis_keys)
        worker = LoadWorker(workdir)
        cells = sweep(worker, targets, args)
        report(cells, targets, args, load_before)
        return 0
    except StartError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping everything started", file=sys.stderr)
        return 130
    finally:
        if worker is not None:
            stop(worker.proc)
        children.stop_all()
        _delete_redis_keys(redis_keys)
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"total runtime {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
