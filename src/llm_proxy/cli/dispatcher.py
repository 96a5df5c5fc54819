"""`llm-proxy dispatcher`: deliver events to a sink; inspect and re-drive dead letters; backfill."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from llm_proxy.cli.options import build_environment, settings_or_exit
from llm_proxy.dispatcher.daemon import PidFile, detach
from llm_proxy.dispatcher.deadletter import DeadLetterStore
from llm_proxy.dispatcher.replay import ReplayReport, events_from_file, replay
from llm_proxy.dispatcher.runner import (
    build_bus_for_dispatcher,
    consumer_group,
    delivery_sink,
    serve,
    stop_on_signals,
)
from llm_proxy.dispatcher.sinks import SINKS, build_sink
from llm_proxy.dispatcher.transform import Transformer
from llm_proxy.errors import ConfigError
from llm_proxy.settings import Settings
from llm_proxy.telemetry.events import Telemetry, install_handlers
from llm_proxy.telemetry.logs import configure_logging

FLAGS = {"service": "DISPATCHER_SERVICE", "endpoint": "DISPATCHER_ENDPOINT", "api_key": "LLM_PROXY_API_KEY",
         "buffer": "DISPATCHER_BUFFER", "batch_size": "DISPATCHER_BATCH_SIZE",
         "flush_interval": "DISPATCHER_FLUSH_INTERVAL", "max_retries": "DISPATCHER_MAX_RETRIES",
         "health_addr": "DISPATCHER_HEALTH_ADDR", "pid_file": "DISPATCHER_PID_FILE",
         "log_file": "DISPATCHER_LOG_FILE", "log_level": "LOG_LEVEL"}


def sink_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((
        click.option("--service", type=click.Choice(sorted(SINKS)), help="Sink (DISPATCHER_SERVICE, default file)."),
        click.option("--endpoint", help="File path, or the service's base URL (DISPATCHER_ENDPOINT)."),
        click.option("--api-key", help="Key of the service (LLM_PROXY_API_KEY)."),
    )):
        command = option(command)
    return command


@click.group(invoke_without_command=True)
@sink_options
@click.option("--buffer", type=click.IntRange(1), help="Accepted for compatibility; no effect (DISPATCHER_BUFFER).")
@click.option("--batch-size", type=click.IntRange(1), help="Events per sink call (DISPATCHER_BATCH_SIZE).")
@click.option("--flush-interval", help="Send a partial batch after this long, e.g. 1s (DISPATCHER_FLUSH_INTERVAL).")
@click.option("--max-retries", type=click.IntRange(0), help="Retries before dead-lettering (DISPATCHER_MAX_RETRIES).")
@click.option("--detach", "-d", is_flag=True, default=None, help="Run in the background (DISPATCHER_DETACH).")
@click.option("--health-addr", help="Serve /health and /metrics on host:port (DISPATCHER_HEALTH_ADDR).")
@click.option("--pid-file", help="PID file (DISPATCHER_PID_FILE; --detach default data/dispatcher-<service>.pid).")
@click.option("--log-file", help="Log file of --detach (DISPATCHER_LOG_FILE).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warn", "error"]), help="LOG_LEVEL.")
@click.option("--env", "env_file", default=".env", show_default=True, help="Env file read at start-up.")
@click.pass_context
def dispatcher(ctx: click.Context, /, env_file: str, detach: bool | None, **flags: Any) -> None:
    """Deliver events from the event bus to one sink: file, lunary, helicone or cloudwatch.

    Reads Redis Streams (LLM_PROXY_EVENT_BUS defaults to redis-streams here) in the consumer
    group llm-proxy-dispatchers-<service> (REDIS_CONSUMER_GROUP overrides), acknowledges an
    event only after the sink confirmed it, and moves what the sink rejects, or what still fails
    after the retries, to the dead-letter stream. SIGTERM drains the batch in flight.
    """
    overrides = {FLAGS[name]: None if value is None else str(value) for name, value in flags.items()}
    overrides["DISPATCHER_DETACH"] = None if detach is None else str(detach).lower()
    ctx.obj = {"env_file": env_file, "overrides": overrides}
    if ctx.invoked_subcommand is None:
        env, settings = _load(ctx)
        _run(env, settings)


def _load(ctx: click.Context, **extra: str | None) -> tuple[dict[str, str], Settings]:
    root = ctx.find_root().obj if ctx.obj is None else ctx.obj
    overrides = {**root["overrides"], **{k: v for k, v in extra.items() if v is not None}}
    env = build_environment(root["env_file"], overrides)
    env.setdefault("LLM_PROXY_EVENT_BUS", "redis-streams")
    return env, settings_or_exit(env, require_management_token=False)


def _default_path(settings: Settings, configured: str, suffix: str) -> Path:
    return Path(configured or f"data/dispatcher-{settings.dispatcher.service}.{suffix}").resolve()


def _run(env: dict[str, str], settings: Settings) -> None:
    try:  # configuration errors surface here, before detaching
        build_sink(settings.dispatcher.service, settings)
        build_bus_for_dispatcher(settings, logging.getLogger("llm_proxy.dispatcher"))
        install_handlers(Telemetry(), settings.metrics.handlers)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"llm-proxy: config error: {problem}", err=True)
        raise SystemExit(2) from None
    if settings.dispatcher.detach:
        pid_file = _default_path(settings, settings.dispatcher.pid_file, "pid")
        log_file = _default_path(settings, settings.dispatcher.log_file, "log")
        child_env = {**env, "DISPATCHER_DETACH": "false", "DISPATCHER_PID_FILE": str(pid_file)}
        pid = detach(["dispatcher"], child_env, pid_file, log_file)
        click.echo(f"llm-proxy dispatcher ({settings.dispatcher.service}) running in the background: "
                   f"pid {pid}, pid file {pid_file}, log {log_file}")
        return
    configure_logging(settings.log)
    lock = PidFile(settings.dispatcher.pid_file) if settings.dispatcher.pid_file else None
    if lock is not None:
        lock.acquire()
    try:
        asyncio.run(_serve(settings))
    finally:
        if lock is not None:
            lock.release()


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    await serve(settings, stop, logger=logging.getLogger("llm_proxy.dispatcher"))


@dispatcher.group("dead-letter")
def dead_letter() -> None:
    """Inspect and re-drive the dead-letter stream (REDIS_DEAD_LETTER_KEY)."""


@dead_letter.command("list")
@click.option("--service", type=click.Choice(sorted(SINKS)), help="Only this service's consumer group.")
@click.option("--all", "all_groups", is_flag=True, help="Every consumer group.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def dead_letter_list(ctx: click.Context, service: str | None, all_groups: bool, limit: int, as_json: bool) -> None:
    """List dead letters, oldest first: id, event id, group, deliveries, reason."""
    _, settings = _load(ctx, DISPATCHER_SERVICE=service)
    group = None if all_groups else consumer_group(settings, settings.dispatcher.service)
    letters = asyncio.run(_letters(settings, group, limit))
    for letter in letters:
        event = letter.event()
        event_id = event.event_id if event else "(undecodable)"
        if as_json:
            click.echo(orjson.dumps({"id": letter.id, "event_id": event_id, "group": letter.group,
                                     "deliveries": letter.deliveries, "reason": letter.reason}).decode())
        else:
            click.echo(f"{letter.id}  {event_id}  group={letter.group} deliveries={letter.deliveries}  "
                       f"{letter.reason}")
    if not as_json:
        click.echo(f"{len(letters)} dead letters" + ("" if group is None else f" of group {group}"), err=True)


async def _letters(settings: Settings, group: str | None, limit: int) -> list[Any]:
    store = DeadLetterStore.from_settings(settings.redis)
    try:
        return await store.entries(group=group, limit=limit)
    finally:
        await store.aclose()


@dead_letter.command("replay")
@sink_options
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@click.pass_context
def dead_letter_replay(ctx: click.Context, service: str | None, endpoint: str | None, api_key: str | None,
                       limit: int) -> None:
    """Send the service's dead letters to its sink again; delivered ones leave the stream."""
    _, settings = _load(ctx, DISPATCHER_SERVICE=service, DISPATCHER_ENDPOINT=endpoint, LLM_PROXY_API_KEY=api_key)
    configure_logging(settings.log)
    report = asyncio.run(_replay_dead_letters(settings, limit))
    _summary(report, "dead letters")


async def _replay_dead_letters(settings: Settings, limit: int) -> ReplayReport:
    store = DeadLetterStore.from_settings(settings.redis)
    try:
        letters = await store.entries(group=consumer_group(settings, settings.dispatcher.service), limit=limit)
        report = ReplayReport(unreadable=[letter.id for letter in letters if letter.event() is None])
        by_event = {event.event_id: letter.id for letter in letters if (event := letter.event()) is not None}
        events = [event for letter in letters if (event := letter.event()) is not None]
        done = await _send(settings, events)
        report.sent, report.failed = done.sent, done.failed
        await store.delete([by_event[event_id] for event_id in done.sent])
        return report
    finally:
        await store.aclose()


async def _send(settings: Settings, events: Any) -> ReplayReport:
    sink = build_sink(settings.dispatcher.service, settings)
    try:
        return await replay(events, delivery_sink(sink, settings), Transformer(verbose=settings.dispatcher.verbose),
                            settings.dispatcher.batch_size)
    finally:
        await sink.aclose()


@dispatcher.command("replay")
@click.option("--from", "source", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON-lines events: a FILE_EVENT_LOG or a file sink's output.")
@sink_options
@click.pass_context
def replay_file(ctx: click.Context, source: Path, service: str | None, endpoint: str | None,
                api_key: str | None) -> None:
    """Backfill a sink from a file of events (nothing is read from or written to the bus)."""
    _, settings = _load(ctx, DISPATCHER_SERVICE=service, DISPATCHER_ENDPOINT=endpoint, LLM_PROXY_API_KEY=api_key)
    configure_logging(settings.log)
    unreadable: list[str] = []
    report = asyncio.run(_send(settings, events_from_file(source, unreadable)))
    report.unreadable = unreadable
    _summary(report, "events")


def _summary(report: ReplayReport, what: str) -> None:
    for event_id, reason in report.failed.items():
        click.echo(f"failed {event_id}: {reason}", err=True)
    for where in report.unreadable:
        click.echo(f"unreadable {where}", err=True)
    click.echo(f"{len(report.sent)} {what} delivered, {len(report.failed)} failed, "
               f"{len(report.unreadable)} unreadable")
    if report.failed or report.unreadable:
        raise SystemExit(1)
