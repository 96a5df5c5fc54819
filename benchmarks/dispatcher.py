"""Dispatcher throughput from Redis Streams: events/s for the file sink and an HTTP (Lunary) sink.

Loads N events into a fresh stream (not timed), then runs one in-process dispatcher built by the
real composition root (`llm_proxy.dispatcher.runner.serve`: XREADGROUP → transform → sink →
XACK) and times how long it takes until every event is acknowledged. The HTTP sink posts to a
minimal Lunary-compatible receiver started as a subprocess on 127.0.0.1, so it does not share
the dispatcher's event loop. Needs Redis on 127.0.0.1:6379; every key it creates is deleted.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from redis.asyncio import Redis

from llm_proxy.dispatcher.runner import DispatcherProcess, serve
from llm_proxy.events import Event, encode_event
from llm_proxy.mock_upstream import responses, streams
from llm_proxy.mock_upstream.responses import Call
from llm_proxy.mock_upstream.textgen import Plan
from llm_proxy.settings import load_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


def sample_events(count: int) -> list[bytes]:
    """Chat calls as the proxy records them: 3 in 4 plain JSON, 1 in 4 streamed with usage."""
    plan = Plan(prompt_tokens=12, words=tuple(f"word{i}" for i in range(40)), finish_reason="stop",
                cached_tokens=0, reasoning_tokens=0)
    call = Call(seq=1, created=1_790_000_000, model="gpt-4o-mini")
    request = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello " * 12}]})
    plain = orjson.dumps(responses.chat_completion(call, plan))
    streamed = b"".join(streams.chat_stream(call, plan, 8, True))
    now = time.time()
    events = []
    for i in range(count):
        stream = i % 4 == 3
        started = datetime.fromtimestamp(now, UTC)
        events.append(encode_event(Event(
            request_id=f"bench-{i}", started_at=started, ended_at=started, duration_ms=12.0, method="POST",
            path="/v1/chat/completions", status=200, provider="openai", model="gpt-4o-mini", stream=stream,
            project_id="p", token_id="t", token_metadata={"user_id": "u1"}, user_id="u1",
            request_headers={"content-type": "application/json"},
            response_headers={"content-type": "text/event-stream" if stream else "application/json"},
            request_body=request, response_body=streamed if stream else plain)))
    return events


async def load_stream(key: str, payloads: list[bytes]) -> None:
    client = Redis.from_url(REDIS_URL)
    for start in range(0, len(payloads), 1000):
        async with client.pipeline(transaction=False) as pipe:
            for payload in payloads[start:start + 1000]:
                pipe.xadd(key, {"data": payload})
            await pipe.execute()
    await client.aclose()


async def run_one(sink: str, env: dict[str, str], count: int) -> float:
    key = f"bench-dispatch-{uuid.uuid4().hex[:10]}"
    await load_stream(key, sample_events(count))
    settings = load_settings({**env, "LLM_PROXY_EVENT_BUS": "redis-streams", "REDIS_URL": REDIS_URL,
                              "REDIS_STREAM_KEY": key, "REDIS_DEAD_LETTER_KEY": f"{key}-dead",
                              "REDIS_STREAM_MAX_LEN": "0", "DISPATCHER_SERVICE": sink, "LOG_LEVEL": "warning"},
                             require_management_token=False)
    stop = asyncio.Event()
    started: asyncio.Future[DispatcherProcess] = asyncio.get_running_loop().create_future()
    began = time.perf_counter()
    task = asyncio.create_task(serve(settings, stop, logger=logging.getLogger("bench"), started=started))
    process = await started
    while process.dispatcher.stats.delivered + process.dispatcher.stats.dead_lettered < count:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - began
    stop.set()
    await task
    if process.dispatcher.stats.dead_lettered:
        print(f"warning: {process.dispatcher.stats.dead_lettered} events dead-lettered", file=sys.stderr)
    client = Redis.from_url(REDIS_URL)
    await client.delete(key, f"{key}-dead")
    await client.aclose()
    return elapsed


def serve_receiver(port: int) -> None:
    """A Lunary ingestion endpoint that accepts everything (runs in the child process)."""
    from aiohttp import web

    async def ingest(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        results = [{"id": e["runId"], "success": True} for e in body["events"]]
        return web.Response(body=orjson.dumps({"results": results}), content_type="application/json")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v1/runs/ingest", ingest)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve-receiver", str(port)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return child, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    child.kill()
    raise SystemExit("the HTTP receiver did not start")


async def main(args: argparse.Namespace) -> None:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        raise SystemExit("Redis is not reachable on 127.0.0.1:6379") from None
    receiver, url = start_receiver()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for batch in args.batch_sizes:
                common = {"DISPATCHER_BATCH_SIZE": str(batch), "REDIS_STREAM_BATCH_SIZE": str(batch)}
                for sink, env in (("file", {"DISPATCHER_ENDPOINT": str(Path(tmp) / f"out-{batch}.jsonl")}),
                                  ("lunary", {"LUNARY_API_URL": url, "LUNARY_PUBLIC_KEY": "bench"})):
                    if sink in args.sinks:
                        seconds = await run_one(sink, {**common, **env}, args.events)
                        rows.append((sink, batch, args.events, seconds))
    finally:
        receiver.terminate()
        receiver.wait(10)
    print(f"{'sink':<8} {'batch':>6} {'events':>8} {'seconds':>8} {'events/s':>10}")
    for sink, batch, count, seconds in rows:
        print(f"{sink:<8} {batch:>6} {count:>8} {seconds:>8.2f} {count / seconds:>10.0f}")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run (default 20000)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 500],
                        help="comma-separated DISPATCHER_BATCH_SIZE values (default 100,500)")
    parser.add_argument("--sinks", type=lambda s: s.split(","), default=["file", "lunary"],
                        help="file,lunary (default both)")
    parser.add_argument("--serve-receiver", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.serve_receiver:
        serve_receiver(arguments.serve_receiver)
    else:
        asyncio.run(main(arguments))
