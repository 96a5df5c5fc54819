"""The management app over real SQLite storage in a temporary directory, called in-process."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI

from llm_proxy.audit import AuditRecorder
from llm_proxy.management import ManagementDeps, create_management_app
from llm_proxy.settings import Settings, load_settings
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import SqlStorage, open_storage

MANAGEMENT_TOKEN = "test-management-token"
AUTH = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
CLIENT_ADDR = ("203.0.113.7", 40001)


class StepClock:
    """Wall time that starts at a fixed instant and moves only when told to."""

    def __init__(self) -> None:
        self.current = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


@dataclass
class Harness:
    client: httpx.AsyncClient
    app: FastAPI
    storage: SqlStorage
    audit: AuditRecorder
    settings: Settings
    clock: StepClock
    audit_file: Path
    token_changes: list[str] = field(default_factory=list)
    project_changes: list[str] = field(default_factory=list)

    async def create_project(self, name: str = "alpha", api_key: str = "sk-live-0123456789abcdef") -> dict[str, Any]:
        response = await self.client.post("/manage/projects", json={"name": name, "api_key": api_key})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def create_token(self, project_id: str, **fields: Any) -> dict[str, Any]:
        payload = {"project_id": project_id, "duration_minutes": 60, **fields}
        response = await self.client.post("/manage/tokens", json=payload)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def audit_lines(self) -> list[dict[str, Any]]:
        await self.audit.flush()
        if not self.audit_file.exists():
            return []
        return [orjson.loads(line) for line in self.audit_file.read_bytes().splitlines()]

    async def audited(self, action: str) -> list[dict[str, Any]]:
        return [line for line in await self.audit_lines() if line["action"] == action]


def management_settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings({
        "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
        "DATABASE_PATH": str(tmp_path / "manage.db"),
        "AUDIT_LOG_FILE": str(tmp_path / "audit" / "audit.log"),
        **env,
    })


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per session; each test starts from a copy (migrations are slow)."""
    path = tmp_path_factory.mktemp("template") / "manage.db"

    async def migrate() -> None:
        settings = load_settings({"MANAGEMENT_TOKEN": "x", "DATABASE_PATH": str(path)})
        storage = await open_storage(settings.storage, KeyCipher(None), migrate=True)
        await storage.aclose()

    asyncio.run(migrate())
    return path


@asynccontextmanager
async def build_harness(tmp_path: Path, template: Path, **env: str) -> AsyncIterator[Harness]:
    settings = management_settings(tmp_path, **env)
    shutil.copyfile(template, settings.storage.database_path)
    clock = StepClock()
    storage = await open_storage(settings.storage, KeyCipher(None), migrate=False, clock=clock)
    recorder = AuditRecorder(settings.audit, storage.audit, clock)
    await recorder.start()
    token_changes: list[str] = []
    project_changes: list[str] = []
    deps = ManagementDeps(settings, storage, recorder, clock,
                          on_token_change=token_changes.append,
                          on_project_change=project_changes.append)
    app = create_management_app(deps)
    transport = httpx.ASGITransport(app=app, client=CLIENT_ADDR)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://manage.test",
                                     headers=AUTH) as client:
            yield Harness(client, app, storage, recorder, settings, clock,
                          Path(settings.audit.log_file), token_changes, project_changes)
    finally:
        await recorder.aclose()
        await storage.aclose()


@pytest_asyncio.fixture
async def harness(tmp_path: Path, migrated_database: Path) -> AsyncIterator[Harness]:
    async with build_harness(tmp_path, migrated_database) as built:
        yield built
