"""`llm-proxy mock-openai`: run the bundled mock OpenAI upstream in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import click

from llm_proxy.mock_upstream import MockServer, serve


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _announce(server: MockServer) -> None:
    click.echo(f"mock OpenAI upstream listening on {server.url}")


async def _run(host: str, port: int, options: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await serve(host, port, stop=stop, on_ready=_announce, **options)


@click.command("mock-openai")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8090, show_default=True, type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one (printed on start).",
)
@click.option(
    "--latency-ms", default=0.0, show_default=True, type=click.FloatRange(min=0),
    help="Wait this long before answering each request.",
)
@click.option(
    "--chunk-delay-ms", default=0.0, show_default=True, type=click.FloatRange(min=0),
    help="Wait this long between the frames of a streamed reply.",
)
@click.option(
    "--chunks", default=8, show_default=True, type=click.IntRange(min=1),
    help="Number of content frames in a streamed reply.",
)
@click.option(
    "--api-key", default=None,
    help="Accept only this bearer key (default: any non-empty key).",
)
def mock_openai(
    host: str, port: int, latency_ms: float, chunk_delay_ms: float, chunks: int, api_key: str | None
) -> None:
    """Run a fast, deterministic OpenAI-compatible server for local use, tests and benchmarks.

    \b
    Serves POST /v1/chat/completions, /v1/completions, /v1/responses (streamed or not),
    /v1/embeddings, /v1/audio/transcriptions, and GET /v1/models[/{id}], /health.
    Replies echo the last user message; usage counts whitespace-separated words.
    Per-request X-Mock-* headers (Status, Latency-Ms, Chunk-Delay-Ms, Chunks,
    Drop-After-Chunks, Echo-Headers, Gzip, Cached-Tokens, Reasoning-Tokens) provoke behaviour.
    Stops cleanly on Ctrl-C or SIGTERM.
    """
    options = {
        "latency_ms": latency_ms,
        "chunk_delay_ms": chunk_delay_ms,
        "chunks": chunks,
        "api_key": api_key,
    }
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_run(host, port, options))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
