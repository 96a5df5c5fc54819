from __future__ import annotations

from typing import Any

import pytest

from tests.management.conftest import Harness

KEY = "sk-live-0123456789abcdef"
SHOWN_KEY = "sk-live-...cdef"
PROJECT_FIELDS = {"id", "name", "api_key", "is_active", "deactivated_at", "created_at", "updated_at",
                  "cost_alert_threshold", "max_budget", "budget_period", "spend_usd"}


class TestCreateProject:
    async def test_created_project_is_201_with_the_key_obfuscated(self, harness: Harness) -> None:
        response = await harness.client.post("/manage/projects", json={"name": "alpha", "api_key": KEY})
        assert response.status_code == 201
        body = response.json()
        assert set(body) == PROJECT_FIELDS
        assert body["api_key"] == SHOWN_KEY
        assert KEY not in response.text
        assert body["is_active"] is True
        assert body["deactivated_at"] is None
        assert body["created_at"] == "2025-03-01T12:00:00Z"
        assert harness.project_changes == [body["id"]]

    async def test_the_full_key_is_stored(self, harness: Harness) -> None:
        body = await harness.create_project(api_key=KEY)
        stored = await harness.storage.projects.get(body["id"])
        assert stored is not None
        assert stored.api_key == KEY

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            ({"api_key": KEY}, "name and api_key are required"),
            ({"name": "alpha"}, "name and api_key are required"),
            ({"name": "", "api_key": KEY}, "name and api_key are required"),
            ({"name": "alpha", "api_key": ""}, "name and api_key are required"),
            ({"name": "   ", "api_key": KEY},
             "name must contain a visible character and no control characters"),
            ({"name": "a\x00b", "api_key": KEY},
             "name must contain a visible character and no control characters"),
            ({"name": 7, "api_key": KEY}, "name must be a string"),
            ({"name": "alpha", "api_key": KEY, "openai_api_key": KEY}, "unknown field: openai_api_key"),
            ({"name": "x" * 256, "api_key": KEY}, "name must be at most 255 characters"),
            ({"name": "alpha", "api_key": "sk-live-...cdef"},
             "cannot save obfuscated API key - please provide the full API key"),
            ({"name": "alpha", "api_key": "sk****************"},
             "cannot save obfuscated API key - please provide the full API key"),
        ],
    )
    async def test_invalid_input_is_400_with_a_message(
        self, harness: Harness, payload: dict[str, Any], message: str
    ) -> None:
        response = await harness.client.post("/manage/projects", json=payload)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": message}

    async def test_a_taken_name_is_409(self, harness: Harness) -> None:
        await harness.create_project(name="alpha")
        response = await harness.client.post("/manage/projects", json={"name": "alpha", "api_key": KEY})
        assert response.status_code == 409
        assert response.json() == {"error": "a project with this name already exists",
                                   "code": "duplicate_name"}

    async def test_creation_and_failures_are_audited(self, harness: Harness) -> None:
        project = await harness.create_project(name="alpha")
        await harness.client.post("/manage/projects", json={"name": "alpha", "api_key": "sk-...abcd"})
        ok, failed = await harness.audited("project.create")
        assert ok["result"] == "success"
        assert ok["project_id"] == project["id"]
        assert ok["details"]["project_name"] == "alpha"
        assert failed["result"] == "failure"
        assert failed["details"]["reason"].startswith("cannot save obfuscated API key")


class TestListAndReadProjects:
    async def test_list_is_ordered_by_name_and_paged_in_headers(self, harness: Harness) -> None:
        for name in ("charlie", "alpha", "bravo"):
            await harness.create_project(name=name)
        response = await harness.client.get("/manage/projects", params={"page": 2, "page_size": 2})
        assert response.status_code == 200
        assert [p["name"] for p in response.json()] == ["charlie"]
        assert response.headers["x-total-count"] == "3"
        assert response.headers["x-page"] == "2"
        assert response.headers["x-page-size"] == "2"
        first = await harness.client.get("/manage/projects")
        assert [p["name"] for p in first.json()] == ["alpha", "bravo", "charlie"]
        assert first.headers["x-page-size"] == "50"

    async def test_active_only_hides_deactivated_projects(self, harness: Harness) -> None:
        keep = await harness.create_project(name="keep")
        drop = await harness.create_project(name="drop")
        await harness.client.patch(f"/manage/projects/{drop['id']}", json={"is_active": False})
        response = await harness.client.get("/manage/projects", params={"active_only": "true"})
        assert [p["id"] for p in response.json()] == [keep["id"]]
        assert response.headers["x-total-count"] == "1"

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({"page": "0"}, "page must be >= 1"),
            ({"page": "1.0"}, "page must be an integer"),
            ({"page": "two"}, "page must be an integer"),
            ({"page_size": "501"}, "page_size must be <= 500"),
            ({"active_only": "maybe"}, "active_only must be a boolean"),
        ],
    )
    async def test_bad_paging_is_400(self, harness: Harness, params: dict[str, str], message: str) -> None:
        response = await harness.client.get("/manage/projects", params=params)
        assert response.status_code == 400
        assert response.json() == {"error": message}

    async def test_get_shows_the_obfuscated_key(self, harness: Harness) -> None:
        project = await harness.create_project()
        response = await harness.client.get(f"/manage/projects/{project['id']}")
        assert response.status_code == 200
        assert response.json() == project

    @pytest.mark.parametrize("project_id", ["0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10", "not-a-uuid", "1%27%20OR%201=1"])
    async def test_an_unknown_or_malformed_id_is_404(self, harness: Harness, project_id: str) -> None:
        response = await harness.client.get(f"/manage/projects/{project_id}")
        assert response.status_code == 404
        assert response.json() == {"error": "project not found"}

    async def test_uppercase_ids_find_the_project(self, harness: Harness) -> None:
        project = await harness.create_project()
        response = await harness.client.get(f"/manage/projects/{project['id'].upper()}")
        assert response.json()["id"] == project["id"]


class TestUpdateProject:
    async def test_rename_and_new_key(self, harness: Harness) -> None:
        project = await harness.create_project(name="alpha")
        harness.clock.advance(minutes=5)
        response = await harness.client.patch(
            f"/manage/projects/{project['id']}", json={"name": "beta", "api_key": "sk-new-key-9876543210"}
        )
        assert response.status_code == 200
        body = response.json()
        assert body["name"] == "beta"
        assert body["api_key"] == "sk-new-k...3210"
        assert body["updated_at"] == "2025-03-01T12:05:00Z"
        stored = await harness.storage.projects.get(project["id"])
        assert stored is not None
        assert stored.api_key == "sk-new-key-9876543210"
        [entry] = await harness.audited("project.update")
        assert entry["details"]["updated_fields"] == ["name", "api_key"]

    async def test_an_empty_key_keeps_the_current_one(self, harness: Harness) -> None:
        project = await harness.create_project(api_key=KEY)
        response = await harness.client.patch(f"/manage/projects/{project['id']}", json={"api_key": ""})
        assert response.json()["api_key"] == SHOWN_KEY

    async def test_an_empty_body_only_bumps_updated_at(self, harness: Harness) -> None:
        project = await harness.create_project()
        harness.clock.advance(seconds=1)
        response = await harness.client.patch(f"/manage/projects/{project['id']}", json={})
        assert response.status_code == 200
        assert response.json()["updated_at"] == "2025-03-01T12:00:01Z"
        assert response.json()["name"] == project["name"]

    async def test_deactivation_sets_and_reactivation_clears_deactivated_at(self, harness: Harness) -> None:
        project = await harness.create_project()
        off = await harness.client.patch(f"/manage/projects/{project['id']}", json={"is_active": False})
        assert off.json()["is_active"] is False
        assert off.json()["deactivated_at"] == "2025-03-01T12:00:00Z"
        on = await harness.client.patch(f"/manage/projects/{project['id']}", json={"is_active": True})
        assert on.json()["deactivated_at"] is None
        assert harness.project_changes.count(project["id"]) == 3

    async def test_deactivation_with_revoke_tokens_revokes_every_token(self, harness: Harness) -> None:
        project = await harness.create_project()
        tokens = [await harness.create_token(project["id"]) for _ in range(2)]
        response = await harness.client.patch(
            f"/manage/projects/{project['id']}", json={"is_active": False, "revoke_tokens": True}
        )
        assert response.status_code == 200
        for token in tokens:
            stored = await harness.storage.tokens.get(token["id"])
            assert stored is not None
            assert stored.is_active is False
        [entry] = await harness.audited("project.update")
        assert entry["details"]["tokens_revoked"] == 2

    async def test_deactivation_without_revoke_tokens_keeps_tokens_active(self, harness: Harness) -> None:
        project = await harness.create_project()
        token = await harness.create_token(project["id"])
        await harness.client.patch(f"/manage/projects/{project['id']}", json={"is_active": False})
        stored = await harness.storage.tokens.get(token["id"])
        assert stored is not None
        assert stored.is_active is True

    @pytest.mark.parametrize(
        "payload",
        [{"revoke_tokens": True}, {"revoke_tokens": False}, {"is_active": True, "revoke_tokens": True}],
    )
    async def test_revoke_tokens_without_deactivation_is_400(
        self, harness: Harness, payload: dict[str, Any]
    ) -> None:
        project = await harness.create_project()
        response = await harness.client.patch(f"/manage/projects/{project['id']}", json=payload)
        assert response.status_code == 400
        assert response.json() == {"error": "revoke_tokens requires is_active=false"}

    @pytest.mark.parametrize(
        ("payload", "status", "message"),
        [
            ({"api_key": "sk-live-...cdef"}, 400,
             "cannot save obfuscated API key - please provide the full API key"),
            ({"is_active": "no"}, 400, "is_active must be a boolean"),
            ({"name": None}, 400, "name must not be null"),
            ({"name": "beta"}, 409, "a project with this name already exists"),
        ],
    )
    async def test_bad_updates_are_refused(
        self, harness: Harness, payload: dict[str, Any], status: int, message: str
    ) -> None:
        project = await harness.create_project(name="alpha")
        await harness.create_project(name="beta")
        response = await harness.client.patch(f"/manage/projects/{project['id']}", json=payload)
        assert response.status_code == status
        assert response.json()["error"] == message

    async def test_updating_an_unknown_project_is_404(self, harness: Harness) -> None:
        response = await harness.client.patch(
            "/manage/projects/0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10", json={"name": "x"}
        )
        assert response.status_code == 404
        assert response.json() == {"error": "project not found"}


class TestDeleteProject:
    async def test_delete_is_405_with_allow_and_is_audited(self, harness: Harness) -> None:
        project = await harness.create_project()
        response = await harness.client.delete(f"/manage/projects/{project['id']}")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, PATCH"
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "method not allowed",
                                   "message": "project deletion is not permitted"}
        [entry] = await harness.audited("project.delete")
        assert entry["result"] == "failure"
        assert entry["project_id"] == project["id"]
        assert await harness.storage.projects.get(project["id"]) is not None
