from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.management.conftest import Harness, build_harness

UNKNOWN_ID = "0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10"


async def _events(harness: Harness, **params: str | int) -> dict:  # type: ignore[type-arg]
    await harness.audit.flush()
    response = await harness.client.get("/manage/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


class TestAuditedActions:
    async def test_a_management_action_lands_in_the_database_with_request_fields(
        self, harness: Harness
    ) -> None:
        response = await harness.client.post(
            "/manage/projects", json={"name": "alpha", "api_key": "sk-live-0123456789abcdef"},
            headers={"User-Agent": "ops-script/1.0", "X-Request-ID": "req-123",
                     "X-Correlation-ID": "deploy-7"},
        )
        body = await _events(harness, action="project.create")
        [event] = body["events"]
        assert event["actor"] == "management_api"
        assert event["outcome"] == "success"
        assert event["project_id"] == response.json()["id"]
        assert event["request_id"] == "req-123"
        assert event["correlation_id"] == "deploy-7"
        assert event["client_ip"] == "203.0.113.7"
        assert event["method"] == "POST"
        assert event["path"] == "/manage/projects"
        assert event["user_agent"] == "ops-script/1.0"
        assert event["details"]["project_name"] == "alpha"
        assert orjson.loads(event["metadata"]) == event["details"]
        assert event["timestamp"] == "2025-03-01T12:00:00Z"

    async def test_a_failure_keeps_its_reason(self, harness: Harness) -> None:
        await harness.client.get(f"/manage/tokens/{UNKNOWN_ID}")
        [event] = (await _events(harness, action="token.read"))["events"]
        assert event["outcome"] == "failure"
        assert event["reason"] == "token not found"
        [line] = await harness.audited("token.read")
        assert line["result"] == "failure"
        assert line["details"]["reason"] == "token not found"

    async def test_admin_ui_headers_are_recorded(self, harness: Harness) -> None:
        await harness.client.get("/manage/projects", headers={
            "X-Admin-Origin": "1", "X-Forwarded-User-Agent": "Firefox/130",
            "X-Forwarded-Referer": "http://admin/projects", "X-Forwarded-For": "198.51.100.1",
        })
        [event] = (await _events(harness, action="project.list"))["events"]
        assert event["details"]["origin"] == "admin-ui"
        assert event["details"]["referer"] == "http://admin/projects"
        assert event["user_agent"] == "Firefox/130"
        assert event["client_ip"] == "203.0.113.7", "X-Forwarded-For is ignored unless trusted"

    async def test_forwarded_client_ip_is_used_when_trusted(
        self, tmp_path: Path, migrated_database: Path
    ) -> None:
        async with build_harness(tmp_path, migrated_database, TRUST_PROXY_HEADERS="true") as harness:
            await harness.client.get("/manage/projects", headers={"X-Forwarded-For": "198.51.100.1, 10.0.0.1"})
            [event] = (await _events(harness, action="project.list"))["events"]
            assert event["client_ip"] == "198.51.100.1"


class TestAuditQuery:
    async def test_filters_paging_and_newest_first(self, harness: Harness) -> None:
        for name in ("proj-x1", "proj-x2", "proj-x3"):
            await harness.create_project(name=name)
            harness.clock.advance(minutes=1)
        await harness.client.post("/manage/projects", json={"name": "proj-x1", "api_key": "k" * 20})
        page = await _events(harness, action="project.create", page=1, page_size=2)
        assert [e["details"]["project_name"] for e in page["events"]] == ["proj-x1", "proj-x3"]
        assert page["pagination"] == {"page": 1, "page_size": 2, "total_count": 4, "total_pages": 2,
                                      "has_next": True, "has_prev": False}
        failures = await _events(harness, action="project.create", outcome="failure")
        assert [e["reason"] for e in failures["events"]] == ["a project with this name already exists"]
        window = await _events(harness, action="project.create", start_time="2025-03-01T12:01:00Z",
                               end_time="2025-03-01T13:01:30+01:00")
        assert [e["details"]["project_name"] for e in window["events"]] == ["proj-x2"]
        found = await _events(harness, search="proj-x3")
        assert {e["action"] for e in found["events"]} == {"project.create"}

    async def test_listing_is_itself_audited(self, harness: Harness) -> None:
        await _events(harness)
        listed = await _events(harness, action="audit.list")
        assert listed["events"][0]["details"]["page_size"] == 20

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({"page_size": "101"}, "page_size must be <= 100"),
            ({"start_time": "yesterday"}, "start_time must be an RFC 3339 date-time (2025-01-31T00:00:00Z)"),
            ({"end_time": "2025-02-30T00:00:00Z"}, "end_time must be an RFC 3339 date-time (2025-01-31T00:00:00Z)"),
            ({"action": "a\x00b"}, "action has an invalid format"),
        ],
    )
    async def test_bad_queries_are_400(self, harness: Harness, params: dict[str, str], message: str) -> None:
        response = await harness.client.get("/manage/audit", params=params)
        assert response.status_code == 400
        assert response.json() == {"error": message}

    async def test_one_event_by_id(self, harness: Harness) -> None:
        await harness.create_project()
        [event] = (await _events(harness, action="project.create"))["events"]
        response = await harness.client.get(f"/manage/audit/{event['id']}")
        assert response.status_code == 200
        assert response.json() == event
        for missing in (UNKNOWN_ID, "nope"):
            response = await harness.client.get(f"/manage/audit/{missing}")
            assert response.status_code == 404
            assert response.json() == {"error": "audit event not found"}

    async def test_without_database_storage_the_audit_api_is_503(
        self, tmp_path: Path, migrated_database: Path
    ) -> None:
        async with build_harness(tmp_path, migrated_database, AUDIT_STORE_IN_DB="false") as harness:
            response = await harness.client.get("/manage/audit")
            assert response.status_code == 503
            assert response.json() == {"error": "audit events not available", "code": "audit_unavailable"}
            response = await harness.client.get(f"/manage/audit/{UNKNOWN_ID}")
            assert response.json()["error"] == "audit event not available"
            await harness.create_project()
            assert await harness.audited("project.create"), "the file still gets every entry"
