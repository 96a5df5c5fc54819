"""Metric totals of `llm-proxy server --workers 2`: every scrape, whichever worker answers, adds up both."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_proxy.mock_upstream.server import start_mock
from llm_proxy.telemetry.store import read_directory
from tests.services import free_port

pytestmark = pytest.mark.e2e

BATCH = 12
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello workers"}]}


@pytest.fixture
async def two_workers(tmp_path: Path) -> AsyncIterator[tuple[str, str, Path]]:
    mock = await start_mock("127.0.0.1", 0)
    port, management = free_port(), secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_PROXY_", "DATABASE_", "REDIS_", "OTEL_"))}
    env.update({"MANAGEMENT_TOKEN": management, "DATABASE_PATH": str(tmp_path / "db.sqlite"),
                "AUDIT_LOG_FILE": str(tmp_path / "audit.log"), "EVENT_SPOOL_DIR": str(tmp_path / "spool"),
                "API_CONFIG_PATH": str(tmp_path / "none.yaml"), "OPENAI_API_URL": mock.url,
                "LOG_LEVEL": "warning", "METRICS_MULTIPROCESS_DIR": str(tmp_path / "metrics")})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_proxy", "server", "--addr", f"127.0.0.1:{port}", "--workers", "2", env=env,
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", management, tmp_path / "metrics"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
        await mock.close()


async def wait_ready(http: aiohttp.ClientSession, url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{url}/metrics") as resp:
                if resp.status == 200 and orjson.loads(await resp.read())["workers"] == 2:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the two workers did not come up")


async def create_token(http: aiohttp.ClientSession, url: str, management: str) -> str:
    auth = {"Authorization": f"Bearer {management}"}
    async with http.post(f"{url}/manage/projects", json={"name": "w", "api_key": "sk-up"}, headers=auth) as resp:
        project = await resp.json()
    async with http.post(f"{url}/manage/tokens", json={"project_id": project["id"], "duration_minutes": 5},
                         headers=auth) as resp:
        token: str = (await resp.json())["token"]
        return token


async def count_requests(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics/prometheus") as resp:
        text = await resp.text()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "llm_proxy_requests_total")


def per_worker_requests(directory: Path) -> list[float]:
    masters = {orjson.loads(index.read_bytes().splitlines()[0])["master"] for index in directory.glob("*.index")}
    assert len(masters) == 1
    return [sum(v[0] for (name, _), v in worker.series.items() if name == "llm_proxy_requests_total")
            for worker in read_directory(directory, masters.pop())]


async def send_batch(http: aiohttp.ClientSession, url: str, token: str) -> None:
    responses = await asyncio.gather(*(
        http.post(f"{url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})
        for _ in range(BATCH)))
    assert [r.status for r in responses] == [200] * BATCH
    for response in responses:
        response.release()


class TestTwoWorkers:
    async def test_every_scrape_reports_the_total_of_both_workers(
            self, two_workers: tuple[str, str, Path]) -> None:
        url, management, directory = two_workers
        # a fresh connection per call, so the kernel can spread the calls over both workers;
        # batches go on until both have served some (the kernel does not promise an even spread)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            await wait_ready(http, url)
            token = await create_token(http, url, management)
            sent = 0
            while sent < 20 * BATCH and (sent == 0 or min(per_worker_requests(directory)) == 0):
                await send_batch(http, url, token)
                sent += BATCH
            counts = [await count_requests(http, url) for _ in range(8)]
        per_worker = per_worker_requests(directory)
        assert len(per_worker) == 2
        assert min(per_worker) > 0, per_worker
        assert counts == [sent] * 8
