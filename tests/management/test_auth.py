from __future__ import annotations

from dataclasses import replace

import pytest

from tests.management.conftest import MANAGEMENT_TOKEN, Harness


class TestManagementToken:
    @pytest.mark.parametrize(
        ("header", "message"),
        [
            (None, "missing or invalid Authorization header"),
            ("Basic dXNlcjpwYXNz", "missing or invalid Authorization header"),
            ("Bearer ", "missing or invalid Authorization header"),
            ("Bearer wrong-token", "invalid management token"),
            (f"Bearer {MANAGEMENT_TOKEN}x", "invalid management token"),
            (f"Bearer {MANAGEMENT_TOKEN[:-1]}", "invalid management token"),
        ],
    )
    async def test_a_missing_or_wrong_token_is_refused_with_401_json(
        self, harness: Harness, header: str | None, message: str
    ) -> None:
        """Every way of not presenting the token gets 401, a JSON body and a Bearer challenge."""
        headers = {"Authorization": header} if header is not None else {}
        harness.client.headers.pop("Authorization")
        response = await harness.client.get("/manage/projects", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"error": message}

    async def test_the_right_token_is_accepted_whatever_the_scheme_case(self, harness: Harness) -> None:
        response = await harness.client.get(
            "/manage/projects", headers={"Authorization": f"bearer {MANAGEMENT_TOKEN}"}
        )
        assert response.status_code == 200

    async def test_auth_runs_before_body_parsing(self, harness: Harness) -> None:
        """An unauthenticated request with a broken body learns nothing about the body."""
        response = await harness.client.post(
            "/manage/projects", content=b"{not json", headers={"Authorization": "Bearer nope"}
        )
        assert response.status_code == 401

    async def test_a_refused_call_is_audited_as_denied(self, harness: Harness) -> None:
        await harness.client.get("/manage/tokens", headers={"Authorization": "Bearer nope"})
        [entry] = await harness.audited("management.auth")
        assert entry["result"] == "denied"
        assert entry["details"]["reason"] == "invalid management token"
        assert entry["client_ip"] == "203.0.113.7"

    async def test_an_unset_management_token_refuses_everything(self, harness: Harness) -> None:
        """With no MANAGEMENT_TOKEN configured no token (not even an empty one) is accepted."""
        deps = harness.app.state.management
        server = replace(deps.settings.server, management_token="")
        harness.app.state.management = replace(deps, settings=replace(deps.settings, server=server))
        response = await harness.client.get("/manage/projects", headers={"Authorization": "Bearer  "})
        assert response.json() == {"error": "missing or invalid Authorization header"}
        response = await harness.client.get("/manage/projects", headers={"Authorization": "Bearer x"})
        assert response.status_code == 401
        assert response.json() == {"error": "invalid management token"}
