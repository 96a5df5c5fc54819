"""Span export in a child process: a real exporter child posting to a real local OTLP receiver."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llm_proxy.settings import LogSettings, load_settings
from llm_proxy.telemetry import export_process
from llm_proxy.telemetry.export_process import ProcessSpanExporter
from llm_proxy.telemetry.tracing import build_tracing
from tests.services import free_port
from tests.telemetry.otlp_receiver import Receiver, otlp_receiver
from tests.telemetry.test_otlp import _record

SPANS_PER_RECORD = 3  # SERVER, the auth child and CLIENT (see test_otlp)


def _exporter(tmp_path: Path, env: dict[str, str]) -> ProcessSpanExporter:
    """The exporter `build_tracing` picks by default; the child logs to a file of the test."""
    settings = load_settings(env, require_management_token=False)
    tracing = build_tracing(settings.tracing, "https://api.example.com/v1",
                            log_settings=LogSettings("info", "json", str(tmp_path / "export.log")))
    assert tracing is not None
    assert isinstance(tracing.exporter, ProcessSpanExporter)
    return tracing.exporter


def _records(count: int, first: int = 1) -> list[tuple[Any, ...]]:
    ids = _record().ids
    return [tuple(_record()._replace(ids=(first + i).to_bytes(16, "big") + ids[16:])) for i in range(count)]


def _traces(records: list[tuple[Any, ...]]) -> Counter[str]:
    return Counter({record[0][:16].hex(): SPANS_PER_RECORD for record in records})


def _received(receiver: Receiver) -> Counter[str]:
    return Counter(span.trace_id for span in receiver.spans)


def _child_pid(exporter: ProcessSpanExporter) -> int:
    child = exporter._child
    assert child is not None
    return child.pid


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _gone(pid: int) -> bool:
    """The process exited (a zombie not yet reaped by whoever adopted it counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return _gone(pid)


async def test_records_are_exported_by_the_child_in_batches(tmp_path: Path) -> None:
    records = _records(300)  # more than one batch of 256 on the pipe
    with otlp_receiver() as receiver:
        exporter = _exporter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
        try:
            for record in records:
                exporter.submit(record)
            await exporter.flush()
            assert _received(receiver) == _traces(records)
            assert (exporter.sent, exporter.dropped) == (300, 0)
            assert receiver.spans[0].resource["service.name"] == "llm-proxy"
        finally:
            await exporter.aclose()


@pytest.mark.parametrize(("priority", "policy", "nice"), [("idle", os.SCHED_IDLE, 0), ("low", os.SCHED_OTHER, 10),
                                                          ("normal", os.SCHED_OTHER, 0)])
async def test_the_child_runs_at_the_configured_cpu_priority(tmp_path: Path, priority: str, policy: int,
                                                            nice: int) -> None:
    with otlp_receiver() as receiver:
        exporter = _exporter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                        "LLM_PROXY_TRACE_EXPORT_PRIORITY": priority})
        try:
            exporter.submit(_records(1)[0])
            await exporter.flush()  # the child set its priority before it exported anything
            pid = _child_pid(exporter)
            assert os.sched_getscheduler(pid) == policy
            assert os.getpriority(os.PRIO_PROCESS, pid) - os.getpriority(os.PRIO_PROCESS, 0) == nice
            assert len(receiver.spans) == SPANS_PER_RECORD
        finally:
            await exporter.aclose()


async def test_closing_hands_over_what_is_queued_and_the_child_exports_it_before_exiting(tmp_path: Path) -> None:
    early, late = _records(5), _records(5, first=100)
    with otlp_receiver() as receiver:
        exporter = _exporter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
        for record in early:
            exporter.submit(record)
        await asyncio.sleep(0.5)  # handed over after the 0.2 s delay; the child holds them for 1 s
        child = exporter._child
        assert child is not None
        for record in late:
            exporter.submit(record)
        await exporter.aclose()
        assert _received(receiver) == _traces(early + late)
        assert (exporter.sent, exporter.dropped) == (10, 0)
        assert child.returncode == 0
        assert _gone(child.pid)


async def test_a_killed_child_drops_batches_until_it_is_restarted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    first, lost, after = _records(2), _records(2, first=100), _records(2, first=200)
    with otlp_receiver() as receiver, caplog.at_level(logging.WARNING, logger="llm_proxy.tracing"):
        exporter = _exporter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
        try:
            for record in first:
                exporter.submit(record)
            await exporter.flush()
            killed = exporter._child
            assert killed is not None
            os.kill(killed.pid, signal.SIGKILL)
            assert await killed.wait() == -signal.SIGKILL
            for record in lost:  # within RESTART_INTERVAL of the first start: no new child yet
                exporter.submit(record)
            await exporter.flush()
            assert (exporter.sent, exporter.dropped) == (2, 2)
            assert "the exporter process exited with status -9" in caplog.text
            monkeypatch.setattr(export_process, "RESTART_INTERVAL", 0.0)
            for record in after:
                exporter.submit(record)
            await exporter.flush()
            assert _child_pid(exporter) != killed.pid
            assert _received(receiver) == _traces(first + after)
            assert (exporter.sent, exporter.dropped) == (4, 2)
        finally:
            await exporter.aclose()
    assert "spans lost: 2 dropped in the worker" in caplog.text


_KILLED_WORKER = """
import ast, asyncio, os, signal, sys
from llm_proxy.settings import LogSettings, load_settings
from llm_proxy.telemetry.export_process import ProcessSpanExporter

async def main():
    url, records, log_file = sys.argv[1], ast.literal_eval(sys.argv[2]), sys.argv[3]
    settings = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": url}, require_management_token=False)
    exporter = ProcessSpanExporter(settings.tracing, LogSettings("info", "json", log_file), "https://api.example.com")
    for record in records:
        exporter.submit(record)
    await asyncio.sleep(0.5)
    print(exporter._child.pid, exporter.sent, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_a_killed_worker_s_child_exports_what_it_holds_and_exits(tmp_path: Path) -> None:
    records = _records(20)
    with otlp_receiver() as receiver, (tmp_path / "worker.err").open("wb") as errors:
        worker = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WORKER, receiver.url, repr(records), str(tmp_path / "export.log")],
            stdout=subprocess.PIPE, stderr=errors)
        try:
            output, _ = worker.communicate(timeout=15)
        finally:
            worker.kill()
        assert worker.returncode == -signal.SIGKILL, (tmp_path / "worker.err").read_text()
        child_pid, sent = map(int, output.split())
        assert sent == 20
        assert _wait_gone(child_pid), "the orphaned exporter process did not exit"
        receiver.wait_for(SPANS_PER_RECORD * 20, timeout=5)
        assert _received(receiver) == _traces(records)


async def test_otlp_header_secrets_reach_the_collector_but_not_the_child_s_argv(tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        exporter = _exporter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cr3t"})
        try:
            exporter.submit(_records(1)[0])
            await exporter.flush()
            cmdline = _cmdline(_child_pid(exporter))
            assert b"llm_proxy.telemetry.export_process" in cmdline
            assert b"s3cr3t" not in cmdline
            assert receiver.headers[0]["authorization"] == "Bearer s3cr3t"
        finally:
            await exporter.aclose()


async def test_flush_returns_when_the_collector_is_down(tmp_path: Path) -> None:
    """The child retries a refused connection (about 7.5 s of back-off in all), then gives the batch up."""
    exporter = _exporter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    try:
        exporter.submit(_records(1)[0])
        async with asyncio.timeout(15):
            await exporter.flush()
        assert (exporter.sent, exporter.dropped) == (1, 0)
    finally:
        await exporter.aclose()
    log = (tmp_path / "export.log").read_text()
    assert "export failed" in log
    assert "1 not accepted by the collector" in log


async def test_closing_while_the_child_is_being_started_keeps_the_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spawn = asyncio.create_subprocess_exec

    async def slow_spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:  # a loaded host's fork/exec
        await asyncio.sleep(0.3)
        return await spawn(*args, **kwargs)

    monkeypatch.setattr(export_process.asyncio, "create_subprocess_exec", slow_spawn)
    with otlp_receiver() as receiver:
        exporter = _exporter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
        for record in _records(5):
            exporter.submit(record)
        await asyncio.sleep(0.3)  # the task waits for the child to start
        await exporter.aclose()
        assert (exporter.sent, exporter.dropped) == (5, 0)
        assert len(receiver.wait_for(15)) == 15
