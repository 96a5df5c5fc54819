from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from llm_proxy.clock import new_id
from llm_proxy.errors import StorageError
from llm_proxy.records import AuditEntry, AuditQuery
from llm_proxy.storage.database import SqlStorage

BASE = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def entry(minutes: int, **fields: Any) -> AuditEntry:
    values: dict[str, Any] = {"action": "token.create", "actor": "management_api",
                              "outcome": "success"}
    values.update(fields)
    return AuditEntry(id=new_id(), timestamp=BASE + timedelta(minutes=minutes), **values)


@pytest.fixture
async def entries(storage: SqlStorage) -> list[AuditEntry]:
    rows = [
        entry(0, project_id="p1", client_ip="10.0.0.1", request_id="req-a", method="POST",
              path="/manage/tokens", details={"token_id": "sk-ab**cd", "note": "Größe 100%"}),
        entry(1, action="project.update", project_id="p1", client_ip="10.0.0.2",
              outcome="failure", reason="name_taken", correlation_id="corr-1"),
        entry(2, action="token.revoke", project_id="p2", client_ip="10.0.0.1",
              user_agent="curl/8", token_id="tok-1"),
        entry(3, action="proxy_request", actor="system", outcome="denied",
              reason="project_inactive", details={"under_score": "x_y"}),
    ]
    for row in rows:
        await storage.audit.append(row)
    return rows


async def ids(storage: SqlStorage, page: int = 1, page_size: int = 20, **filters: Any) -> list[str]:
    found, _ = await storage.audit.query(AuditQuery(**filters), page=page, page_size=page_size)
    return [e.id for e in found]


class TestAuditStore:
    async def test_append_then_get_round_trips_every_field(
        self, storage: SqlStorage, entries: list[AuditEntry]
    ) -> None:
        for stored in entries:
            assert await storage.audit.get(stored.id) == stored
        assert await storage.audit.get("missing") is None

    async def test_query_is_newest_first_with_total(
        self, storage: SqlStorage, entries: list[AuditEntry]
    ) -> None:
        found, total = await storage.audit.query(AuditQuery(), page=1, page_size=20)

        assert [e.id for e in found] == [e.id for e in reversed(entries)]
        assert total == 4

    async def test_pagination(self, storage: SqlStorage, entries: list[AuditEntry]) -> None:
        second, total = await storage.audit.query(AuditQuery(), page=2, page_size=3)

        assert [e.id for e in second] == [entries[0].id]
        assert total == 4
        assert await ids(storage, page=3, page_size=3) == []

    async def test_exact_filters(self, storage: SqlStorage, entries: list[AuditEntry]) -> None:
        cases: list[tuple[dict[str, Any], list[int]]] = [
            ({"action": "token.revoke"}, [2]),
            ({"actor": "system"}, [3]),
            ({"outcome": "failure"}, [1]),
            ({"project_id": "p1"}, [1, 0]),
            ({"client_ip": "10.0.0.1"}, [2, 0]),
            ({"request_id": "req-a"}, [0]),
            ({"correlation_id": "corr-1"}, [1]),
            ({"method": "POST"}, [0]),
            ({"path": "/manage/tokens"}, [0]),
            ({"project_id": "p1", "outcome": "success"}, [0]),
            ({"action": "token"}, []),
        ]
        for filters, expected in cases:
            assert await ids(storage, **filters) == [entries[i].id for i in expected], filters
            _, total = await storage.audit.query(AuditQuery(**filters), page=1, page_size=1)
            assert total == len(expected), filters

    async def test_search_is_a_case_insensitive_substring_over_text_columns(
        self, storage: SqlStorage, entries: list[AuditEntry]
    ) -> None:
        cases: list[tuple[str, list[int]]] = [
            ("TOKEN", [2, 0]),  # action
            ("name_TAKEN", [1]),  # reason
            ("10.0.0.2", [1]),  # client ip
            ("REQ-A", [0]),  # request id
            ("corr-", [1]),  # correlation id
            ("größe", [0]),  # metadata, non-ASCII
            ("100%", [0]),
            ("proxy%request", []),  # "%" is literal, not a wildcard
            ("token_create", []),  # "_" is literal, not a wildcard
            ("r_s", [3]),
            ("/manage/", [0]),  # path
            ("nothing-like-this", []),
        ]
        for search, expected in cases:
            assert await ids(storage, search=search) == [entries[i].id for i in expected], search

    async def test_time_range_is_inclusive_and_timezone_aware(
        self, storage: SqlStorage, entries: list[AuditEntry]
    ) -> None:
        plus_two = timezone(timedelta(hours=2))
        start = (BASE + timedelta(minutes=1)).astimezone(plus_two)

        assert await ids(storage, start_time=start) == [e.id for e in reversed(entries[1:])]
        assert await ids(storage, end_time=BASE + timedelta(minutes=1)) == [
            entries[1].id, entries[0].id,
        ]
        assert await ids(
            storage, start_time=BASE + timedelta(seconds=30), end_time=BASE + timedelta(minutes=2),
            outcome="success",
        ) == [entries[2].id]
        assert await ids(storage, start_time=BASE + timedelta(microseconds=1)) == [
            e.id for e in reversed(entries[1:])
        ]

    async def test_invalid_outcome_is_rejected_by_the_schema(self, storage: SqlStorage) -> None:
        with pytest.raises(StorageError):
            await storage.audit.append(entry(0, outcome="maybe"))
