"""A real llm-proxy (uvicorn on a loopback port) in front of the bundled mock upstream."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

from llm_proxy.app import LlmProxyApp, create_app
from llm_proxy.cli.server import uvicorn_config
from llm_proxy.mock_upstream.server import MockServer, start_mock
from llm_proxy.settings import load_settings
from tests.services import free_port


@dataclass
class LiveProxy:
    url: str
    management_token: str
    app: LlmProxyApp
    mock: MockServer
    http: aiohttp.ClientSession
    tmp: Path

    @property
    def manage_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.management_token}"}

    async def create_project(self, name: str | None = None, api_key: str = "sk-mock-upstream-key") -> dict[str, Any]:
        body = {"name": name or f"p-{secrets.token_hex(4)}", "api_key": api_key}
        async with self.http.post(f"{self.url}/manage/projects", json=body, headers=self.manage_headers) as resp:
            assert resp.status == 201, await resp.text()
            result: dict[str, Any] = await resp.json()
            return result

    async def create_token(self, project_id: str, **fields: Any) -> str:
        body = {"project_id": project_id, "duration_minutes": 60, **fields}
        async with self.http.post(f"{self.url}/manage/tokens", json=body, headers=self.manage_headers) as resp:
            assert resp.status in (200, 201), await resp.text()
            token: str = (await resp.json())["token"]
            return token

    async def project_token(self, **fields: Any) -> tuple[dict[str, Any], str]:
        project = await self.create_project()
        return project, await self.create_token(project["id"], **fields)


@asynccontextmanager
async def running_proxy(tmp: Path, env: dict[str, str] | None = None, **mock_options: Any) -> AsyncIterator[LiveProxy]:
    mock = await start_mock("127.0.0.1", 0, **mock_options)
    port = free_port()
    management_token = secrets.token_hex(16)
    settings = load_settings({
        "MANAGEMENT_TOKEN": management_token,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "DATABASE_PATH": str(tmp / "proxy.db"),
        "AUDIT_LOG_FILE": str(tmp / "audit.log"),
        "API_CONFIG_PATH": str(tmp / "no-providers.yaml"),
        "OPENAI_API_URL": mock.url,
        "EVENT_SPOOL_DIR": str(tmp / "spool"),
        "LOG_LEVEL": "warning",
        "SHUTDOWN_TIMEOUT": "5s",
        **(env or {}),
    })
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the proxy exited during start-up")
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as http:
            yield LiveProxy(f"http://127.0.0.1:{port}", management_token, app, mock, http, tmp)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        await mock.close()
