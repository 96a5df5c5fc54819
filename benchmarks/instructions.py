#!/usr/bin/env python3
"""Instructions per proxied call, counted by callgrind: a measure the machine's load does not move.

    .venv/bin/python benchmarks/instructions.py --calls 400 \
        --variant traced:OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318

Starts the bundled mock upstream, then for each row (`proxy`, plus every `--variant`) an llm-proxy
server (1 worker, the benchmark's settings) under `valgrind --tool=callgrind` with counting off;
sends `--warmup` calls, turns counting on (`callgrind_control -i on`), sends `--calls` calls one
after another over one keep-alive connection, turns counting off, stops the server and prints
the instructions of the server process per call. Child processes (the span exporter) are not
run under valgrind and not counted. Needs valgrind; takes about a minute per row.

Wall-clock benchmarks (run.py) move ±10 % with whatever else the machine does; instruction
counts repeat within about ±1 %, so they show a few thousand instructions gained or lost per call.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from targets import (
    LOOPBACK,
    Children,
    free_port,
    issue_token,
    proxy_env,
    start_mock,
    stop,
)

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}).encode()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="counted calls per row (default 400)")
    parser.add_argument("--warmup", type=int, default=200, help="uncounted calls first (default 200)")
    parser.add_argument("--stream", action="store_true", help="streamed chat calls instead of plain ones")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy each row's callgrind file here (for callgrind_annotate)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:K=V,K=V",
                        help="an extra llm-proxy row with this environment (repeatable)")
    return parser.parse_args(argv)


def variants(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {"proxy": {}}
    for item in args.variant:
        name, _, pairs = item.partition(":")
        rows[name] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    return rows


def send(port: int, token: str, count: int, stream: bool) -> None:
    body = json.dumps({**json.loads(BODY), "stream": True}).encode() if stream else BODY
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    try:
        for _ in range(count):
            connection.request("POST", "/v1/chat/completions", body,
                               {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"the proxy answered {response.status}")
    finally:
        connection.close()


def count_row(children: Children, name: str, upstream: str, extra: dict[str, str],
              args: argparse.Namespace) -> float:
    port = free_port()
    out = children.workdir / f"{name}.callgrind"
    env = proxy_env(name, port, upstream, children.workdir, "instructions-management-token", extra)
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable, "-m", "llm_proxy", "server"]
    child = children.start(name, argv, env)
    url = f"http://{LOOPBACK}:{port}"
    children.wait_ready(child, url + "/health", timeout=180.0)
    token = issue_token(url, "instructions-management-token", name)
    send(port, token, args.warmup, args.stream)
    subprocess.run(["callgrind_control", "-i", "on", str(child.proc.pid)], check=True, capture_output=True)
    send(port, token, args.calls, args.stream)
    subprocess.run(["callgrind_control", "-i", "off", str(child.proc.pid)], check=True, capture_output=True)
    stop(child.proc, grace=120.0)  # valgrind writes the counts as the server exits
    children.started.remove(child)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, args.keep / out.name)
    match = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{name}: no instruction total in {out}")
    return int(match.group(1)) / args.calls


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions.py: valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llm-proxy-instructions-") as workdir:
        children = Children(Path(workdir))
        try:
            upstream = start_mock(children).base_url
            results = {name: count_row(children, name, upstream, extra, args)
                       for name, extra in variants(args).items()}
        finally:
            children.stop_all()
    base = results["proxy"]
    print(f"| row | instructions per {'streamed ' if args.stream else ''}call | vs proxy |")
    print("|---|---:|---:|")
    for name, per_call in results.items():
        print(f"| {name} | {per_call:,.0f} | {per_call - base:+,.0f} ({(per_call / base - 1) * 100:+.1f} %) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
