from __future__ import annotations

from typing import Any

import pytest

from llm_proxy.records import UsageDelta
from llm_proxy.tokens.format import format_problem, hash_token, token_hint
from tests.management.conftest import Harness

UNKNOWN_ID = "0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10"
TOKEN_FIELDS = {
    "id", "token", "project_id", "expires_at", "is_active", "request_count", "max_requests",
    "cache_hit_count", "created_at", "last_used_at", "deactivated_at", "metadata",
    "cost_alert_threshold", "max_budget", "budget_period", "spend_usd",
}


class TestCreateToken:
    async def test_the_secret_is_returned_once_and_only_its_hash_is_stored(self, harness: Harness) -> None:
        project = await harness.create_project()
        created = await harness.create_token(project["id"], duration_minutes=90, max_requests=5)
        secret = created["token"]
        assert format_problem(secret) is None
        assert set(created) == TOKEN_FIELDS | {"token_hint"}
        assert created["token_hint"] == token_hint(secret)
        assert created["expires_at"] == "2025-03-01T13:30:00Z"
        assert created["max_requests"] == 5
        stored = await harness.storage.tokens.get(created["id"])
        assert stored is not None
        assert stored.token_hash == hash_token(secret)
        listed = await harness.client.get("/manage/tokens")
        read = await harness.client.get(f"/manage/tokens/{created['id']}")
        for text in (listed.text, read.text):
            assert secret not in text
        assert read.json()["token"] == token_hint(secret)
        assert harness.token_changes == [created["id"]]

    async def test_zero_max_requests_means_unlimited(self, harness: Harness) -> None:
        project = await harness.create_project()
        created = await harness.create_token(project["id"], max_requests=0)
        assert created["max_requests"] is None

    async def test_integral_floats_count_as_integers(self, harness: Harness) -> None:
        """JSON Schema's `integer` includes 5.0, so the API accepts it."""
        project = await harness.create_project()
        created = await harness.create_token(project["id"], duration_minutes=5.0, max_requests=3.0)
        assert created["max_requests"] == 3

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            ({"duration_minutes": 525601, "max_requests": -1}, "duration_minutes exceeds maximum allowed"),
            ({"duration_minutes": None}, "project_id and duration_minutes are required"),
            ({"project_id": None}, "project_id is required"),
            ({"duration_minutes": 0}, "project_id and duration_minutes are required"),
            ({"duration_minutes": -5}, "project_id and duration_minutes are required"),
            ({"project_id": ""}, "project_id is required"),
            ({"max_requests": -1}, "max_requests must be >= 0"),
            ({"duration_minutes": "60"}, "duration_minutes must be an integer"),
            ({"duration_minutes": 1.5}, "duration_minutes must be an integer"),
            ({"duration_minutes": True}, "duration_minutes must be an integer"),
            ({"max_requests": 2_147_483_648}, "max_requests must be <= 2147483647"),
            ({"metadata": ["a"]}, "metadata must be a JSON object"),
            ({"metadata": "x"}, "metadata must be a JSON object"),
            ({"expires_in_days": 30}, "unknown field: expires_in_days"),
        ],
    )
    async def test_validation_follows_the_predecessor_order(
        self, harness: Harness, payload: dict[str, Any], message: str
    ) -> None:
        body = {"project_id": UNKNOWN_ID, "duration_minutes": 60, **payload}
        body = {key: value for key, value in body.items() if value is not None}
        response = await harness.client.post("/manage/tokens", json=body)
        assert response.status_code == 400
        assert response.json() == {"error": message}

    async def test_an_unknown_project_is_404(self, harness: Harness) -> None:
        for project_id in (UNKNOWN_ID, "no-such-project"):
            response = await harness.client.post(
                "/manage/tokens", json={"project_id": project_id, "duration_minutes": 60}
            )
            assert response.status_code == 404
            assert response.json() == {"error": "project not found"}

    async def test_an_inactive_project_is_403_project_inactive(self, harness: Harness) -> None:
        project = await harness.create_project()
        await harness.client.patch(f"/manage/projects/{project['id']}", json={"is_active": False})
        response = await harness.client.post(
            "/manage/tokens", json={"project_id": project["id"], "duration_minutes": 60}
        )
        assert response.status_code == 403
        assert response.json() == {"error": "cannot create tokens for inactive projects",
                                   "code": "project_inactive"}
        [entry] = [e for e in await harness.audited("token.create") if e["result"] == "failure"]
        assert entry["details"]["error_type"] == "project_inactive"

    async def test_creation_is_audited_without_the_secret(self, harness: Harness) -> None:
        project = await harness.create_project()
        created = await harness.create_token(project["id"], max_requests=7)
        [entry] = await harness.audited("token.create")
        assert entry["result"] == "success"
        assert entry["project_id"] == project["id"]
        assert entry["details"]["token_id"] == created["id"]
        assert entry["details"]["max_requests"] == 7
        assert created["token"] not in harness.audit_file.read_text()


class TestMetadata:
    async def test_metadata_round_trips_through_create_read_and_update(self, harness: Harness) -> None:
        project = await harness.create_project()
        metadata = {"user_id": "u-42", "team": {"name": "core", "tags": ["a", "b"]}, "tier": 3}
        created = await harness.create_token(project["id"], metadata=metadata)
        assert created["metadata"] == metadata
        read = await harness.client.get(f"/manage/tokens/{created['id']}")
        assert read.json()["metadata"] == metadata
        updated = await harness.client.patch(f"/manage/tokens/{created['id']}", json={"metadata": {"user_id": "u-7"}})
        assert updated.json()["metadata"] == {"user_id": "u-7"}
        cleared = await harness.client.patch(f"/manage/tokens/{created['id']}", json={"metadata": None})
        assert cleared.json()["metadata"] == {}

    async def test_metadata_larger_than_16_kib_is_refused(self, harness: Harness) -> None:
        project = await harness.create_project()
        response = await harness.client.post("/manage/tokens", json={
            "project_id": project["id"], "duration_minutes": 60, "metadata": {"blob": "x" * 16_400},
        })
        assert response.status_code == 400
        assert response.json()["error"].startswith("metadata must be at most 16384 bytes as JSON")

    async def test_deeply_nested_metadata_is_refused(self, harness: Harness) -> None:
        project = await harness.create_project()
        nested: dict[str, Any] = {}
        inner = nested
        for _ in range(40):
            inner["k"] = {}
            inner = inner["k"]
        response = await harness.client.post("/manage/tokens", json={
            "project_id": project["id"], "duration_minutes": 60, "metadata": nested,
        })
        assert response.status_code == 400
        assert response.json() == {"error": "metadata must not nest deeper than 32 levels"}


class TestListTokens:
    async def test_filters_by_project_with_either_spelling(self, harness: Harness) -> None:
        alpha = await harness.create_project(name="alpha")
        beta = await harness.create_project(name="beta")
        mine = await harness.create_token(alpha["id"])
        await harness.create_token(beta["id"])
        for name in ("project_id", "projectId"):
            response = await harness.client.get("/manage/tokens", params={name: alpha["id"]})
            assert [t["id"] for t in response.json()] == [mine["id"]]
            assert response.headers["x-total-count"] == "1"
        everything = await harness.client.get("/manage/tokens")
        assert len(everything.json()) == 2

    async def test_a_malformed_project_filter_matches_nothing(self, harness: Harness) -> None:
        project = await harness.create_project()
        await harness.create_token(project["id"])
        response = await harness.client.get("/manage/tokens", params={"project_id": "nope"})
        assert response.status_code == 200
        assert response.json() == []
        assert response.headers["x-total-count"] == "0"

    async def test_active_only_hides_revoked_and_expired_tokens(self, harness: Harness) -> None:
        project = await harness.create_project()
        live = await harness.create_token(project["id"], duration_minutes=600)
        revoked = await harness.create_token(project["id"], duration_minutes=600)
        await harness.create_token(project["id"], duration_minutes=1)
        await harness.client.delete(f"/manage/tokens/{revoked['id']}")
        harness.clock.advance(minutes=5)
        response = await harness.client.get("/manage/tokens", params={"active_only": "true"})
        assert [t["id"] for t in response.json()] == [live["id"]]

    async def test_pages_are_newest_first_with_headers(self, harness: Harness) -> None:
        project = await harness.create_project()
        ids = []
        for _ in range(5):
            ids.append((await harness.create_token(project["id"]))["id"])
            harness.clock.advance(seconds=1)
        response = await harness.client.get("/manage/tokens", params={"page": 2, "page_size": 2})
        assert [t["id"] for t in response.json()] == [ids[2], ids[1]]
        assert (response.headers["x-total-count"], response.headers["x-page"],
                response.headers["x-page-size"]) == ("5", "2", "2")
        assert set(response.json()[0]) == TOKEN_FIELDS


class TestReadUpdateRevokeToken:
    async def test_get_reports_usage_counters_and_deactivation(self, harness: Harness) -> None:
        project = await harness.create_project()
        created = await harness.create_token(project["id"])
        await harness.storage.tokens.apply_usage({created["id"]: UsageDelta(requests=3, cache_hits=2)})
        await harness.client.delete(f"/manage/tokens/{created['id']}")
        body = (await harness.client.get(f"/manage/tokens/{created['id']}")).json()
        assert body["request_count"] == 3
        assert body["cache_hit_count"] == 2
        assert body["is_active"] is False
        assert body["deactivated_at"] == "2025-03-01T12:00:00Z"

    @pytest.mark.parametrize("token_id", [UNKNOWN_ID, "garbage"])
    async def test_unknown_or_malformed_ids_are_404(self, harness: Harness, token_id: str) -> None:
        for method in ("GET", "PATCH", "DELETE"):
            response = await harness.client.request(method, f"/manage/tokens/{token_id}", json={"is_active": False})
            assert response.status_code == 404, method
            assert response.json() == {"error": "token not found"}

    async def test_update_quota_and_activity(self, harness: Harness) -> None:
        project = await harness.create_project()
        created = await harness.create_token(project["id"], max_requests=5)
        response = await harness.client.patch(
            f"/manage/tokens/{created['id']}", json={"max_requests": 0, "is_active": False}
        )
        assert response.status_code == 200
        assert response.json()["max_requests"] is None
        assert response.json()["is_active"] is False
        again = await harness.client.patch(f"/manage/tokens/{created['id']}", json={"is_active": True})
        assert again.json()["is_active"] is True
        assert again.json()["deactivated_at"] is None
        assert harness.token_changes.count(created["id"]) == 3
        entries = await harness.audited("token.update")
        assert entries[0]["details"]["updated_max_requests"] == "unlimited"

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            ({}, "no fields to update"),
            ({"max_requests": -1}, "max_requests must be >= 0"),
            ({"is_active": None}, "is_active must not be null"),
            ({"is_active": 1}, "is_active must be a boolean"),
            ({"token": "sk-x"}, "unknown field: token"),
        ],
    )
    async def test_bad_updates_are_400(self, harness: Harness, payload: dict[str, Any], message: str) -> None:
        project = await harness.create_project()
        created = await harness.create_token(project["id"])
        response = await harness.client.patch(f"/manage/tokens/{created['id']}", json=payload)
        assert response.status_code == 400
        assert response.json() == {"error": message}

    async def test_revoke_is_204_and_idempotent(self, harness: Harness) -> None:
        project = await harness.create_project()
        created = await harness.create_token(project["id"])
        for _ in range(2):
            response = await harness.client.delete(f"/manage/tokens/{created['id']}")
            assert response.status_code == 204
            assert response.content == b""
        first, second = await harness.audited("token.revoke")
        assert first["details"]["already_revoked"] is False
        assert second["details"]["already_revoked"] is True
        assert harness.token_changes[-2:] == [created["id"], created["id"]]


class TestRevokeProjectTokens:
    async def test_bulk_revoke_counts(self, harness: Harness) -> None:
        project = await harness.create_project()
        tokens = [await harness.create_token(project["id"]) for _ in range(3)]
        await harness.client.delete(f"/manage/tokens/{tokens[0]['id']}")
        response = await harness.client.post(f"/manage/projects/{project['id']}/tokens/revoke")
        assert response.status_code == 200
        assert response.json() == {"revoked_count": 2, "already_revoked_count": 1, "total_tokens": 3}
        assert harness.project_changes[-1] == project["id"]
        [entry] = await harness.audited("token.revoke_batch")
        assert entry["details"]["revoked_count"] == 2

    async def test_bulk_revoke_of_an_unknown_project_is_404(self, harness: Harness) -> None:
        response = await harness.client.post(f"/manage/projects/{UNKNOWN_ID}/tokens/revoke")
        assert response.status_code == 404
        assert response.json() == {"error": "project not found"}

    async def test_get_on_the_revoke_path_is_405(self, harness: Harness) -> None:
        project = await harness.create_project()
        response = await harness.client.get(f"/manage/projects/{project['id']}/tokens/revoke")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
