from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from llm_proxy.audit import AuditRecorder
from llm_proxy.records import AuditQuery
from llm_proxy.settings import AuditSettings, load_settings
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import SqlStorage, open_storage

NOW = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW

    def monotonic(self) -> float:
        return 0.0


def settings(path: Path, **overrides: Any) -> AuditSettings:
    values = {"enabled": True, "log_file": str(path), "create_dir": True, "store_in_db": True}
    return AuditSettings(**{**values, **overrides})


@pytest_asyncio.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqlStorage]:
    config = load_settings({"MANAGEMENT_TOKEN": "x", "DATABASE_PATH": str(tmp_path / "audit.db")})
    opened = await open_storage(config.storage, KeyCipher(None), migrate=True)
    yield opened
    await opened.aclose()


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


class TestAuditRecorder:
    async def test_entries_reach_the_file_and_the_database(self, tmp_path: Path, storage: SqlStorage) -> None:
        path = tmp_path / "nested" / "dir" / "audit.log"
        recorder = AuditRecorder(settings(path), storage.audit, FixedClock())
        await recorder.start()
        recorder.record(
            "token.revoke", "management_api", "failure", project_id="p-1", request_id="r-1",
            client_ip="192.0.2.1", method="DELETE", path="/manage/tokens/t-1", user_agent="cli/1",
            token_id="t-1", details={"reason": "token not found", "status": 404},
        )
        await recorder.aclose()
        [line] = lines(path)
        assert line == {
            "timestamp": "2025-03-01T12:00:00.123456Z", "id": line["id"], "action": "token.revoke",
            "actor": "management_api", "project_id": "p-1", "request_id": "r-1",
            "client_ip": "192.0.2.1", "result": "failure",
            "details": {"reason": "token not found", "status": 404, "http_method": "DELETE",
                        "endpoint": "/manage/tokens/t-1", "user_agent": "cli/1", "token_id": "t-1"},
        }
        stored = await storage.audit.get(line["id"])
        assert stored is not None
        assert stored.reason == "token not found", "reason comes from details.reason"
        assert (stored.method, stored.path, stored.token_id) == ("DELETE", "/manage/tokens/t-1", "t-1")

    async def test_proxy_denials_are_recorded_with_their_reason(self, tmp_path: Path, storage: SqlStorage) -> None:
        recorder = AuditRecorder(settings(tmp_path / "a.log"), storage.audit, FixedClock())
        recorder.record("proxy_request", "system", "denied", project_id="p-9", reason="project_inactive")
        await recorder.aclose()
        entries, total = await storage.audit.query(AuditQuery(action="proxy_request"), page=1, page_size=10)
        assert total == 1
        assert (entries[0].actor, entries[0].outcome, entries[0].reason) == ("system", "denied", "project_inactive")

    async def test_disabled_records_nothing(self, tmp_path: Path, storage: SqlStorage) -> None:
        path = tmp_path / "audit.log"
        recorder = AuditRecorder(settings(path, enabled=False), storage.audit, FixedClock())
        assert recorder.enabled is False
        recorder.record("project.list", "management_api", "success")
        await recorder.aclose()
        assert not path.exists()
        assert (await storage.audit.query(AuditQuery(), page=1, page_size=10))[1] == 0

    async def test_file_only_and_database_only(self, tmp_path: Path, storage: SqlStorage) -> None:
        file_only = AuditRecorder(settings(tmp_path / "f.log", store_in_db=False), storage.audit, FixedClock())
        db_only = AuditRecorder(settings(tmp_path / "unused.log", log_file=""), storage.audit, FixedClock())
        assert file_only.queryable is False
        file_only.record("a.file", "x", "success")
        db_only.record("a.db", "x", "success")
        await file_only.aclose()
        await db_only.aclose()
        assert [line["action"] for line in lines(tmp_path / "f.log")] == ["a.file"]
        entries, _ = await storage.audit.query(AuditQuery(), page=1, page_size=10)
        assert [e.action for e in entries] == ["a.db"]

    async def test_a_failing_destination_is_logged_not_raised(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No migrated tables (the database fails) and no directory creation (the file fails)."""
        config = load_settings({"MANAGEMENT_TOKEN": "x", "DATABASE_PATH": str(tmp_path / "empty.db")})
        unmigrated = await open_storage(config.storage, KeyCipher(None), migrate=False)
        path = tmp_path / "missing" / "audit.log"
        recorder = AuditRecorder(settings(path, create_dir=False), unmigrated.audit, FixedClock())
        with caplog.at_level(logging.ERROR, logger="llm_proxy.audit"):
            recorder.record("project.create", "management_api", "success")
            await recorder.aclose()
        await unmigrated.aclose()
        messages = [record.getMessage() for record in caplog.records]
        assert any("failed to write 1 entries" in m for m in messages)
        assert any("failed to store project.create event in database" in m for m in messages)
        assert not path.exists()

    async def test_record_never_blocks_and_counts_drops_when_full(self, tmp_path: Path) -> None:
        recorder = AuditRecorder(settings(tmp_path / "a.log", store_in_db=False), None, FixedClock(),
                                 queue_size=2)
        for index in range(5):
            recorder.record(f"a.{index}", "x", "success")
        assert recorder.dropped >= 1
        await recorder.aclose()
        assert len(lines(tmp_path / "a.log")) == 5 - recorder.dropped

    async def test_unknown_outcomes_and_overlong_fields_are_made_storable(
        self, tmp_path: Path, storage: SqlStorage
    ) -> None:
        recorder = AuditRecorder(settings(tmp_path / "a.log"), storage.audit, FixedClock())
        recorder.record("x", "y", "maybe", client_ip="1" * 100, method="M" * 40)
        await recorder.aclose()
        [line] = lines(tmp_path / "a.log")
        stored = await storage.audit.get(line["id"])
        assert stored is not None
        assert stored.outcome == "error"
        assert stored.client_ip == "1" * 64
        assert stored.method == "M" * 16

    def test_entries_recorded_outside_a_loop_wait_for_flush(self, tmp_path: Path) -> None:
        import asyncio

        recorder = AuditRecorder(settings(tmp_path / "a.log", store_in_db=False), None, FixedClock())
        recorder.record("early", "system", "success")
        assert not (tmp_path / "a.log").exists()
        asyncio.run(recorder.aclose())
        assert [line["action"] for line in lines(tmp_path / "a.log")] == ["early"]
