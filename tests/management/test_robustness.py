"""Bad input of every kind gets a clear 4xx JSON error, never a 500 or FastAPI's 422 `detail`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from llm_proxy.management.middleware import MAX_BODY_BYTES
from tests.management.conftest import Harness

CREATE_PATHS = ("/manage/projects", "/manage/tokens")


class TestMalformedBodies:
    @pytest.mark.parametrize("path", CREATE_PATHS)
    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"{not json", "invalid request body: malformed JSON"),
            (b"", "invalid request body: malformed JSON"),
            (b'{"a": NaN}', "invalid request body: malformed JSON"),
            (b'"\xff\xfe"', "invalid request body: malformed JSON"),
            (b"[1, 2]", "invalid request body: expected a JSON object"),
            (b"null", "invalid request body: expected a JSON object"),
            (b"[" * 5000 + b"]" * 5000, "invalid request body: malformed JSON"),
        ],
    )
    async def test_unparseable_bodies_are_400(
        self, harness: Harness, path: str, content: bytes, message: str
    ) -> None:
        response = await harness.client.post(path, content=content,
                                             headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": message}

    async def test_the_body_is_read_as_json_whatever_the_content_type(self, harness: Harness) -> None:
        """Predecessor clients (and `curl -d`) send JSON as form data; it is still understood."""
        response = await harness.client.post(
            "/manage/projects", content=b'{"name": "curl", "api_key": "sk-0123456789abcdef"}',
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 201

    async def test_a_body_over_one_mib_is_413(self, harness: Harness) -> None:
        blob = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
        response = await harness.client.post("/manage/projects", content=blob)
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "request body too large (limit 1048576 bytes)"}

    async def test_a_streamed_body_over_one_mib_is_413(self, harness: Harness) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"x" * 65536

        response = await harness.client.post("/manage/tokens", content=chunks())
        assert response.status_code == 413


class TestRequestIds:
    async def test_a_well_formed_client_id_is_echoed(self, harness: Harness) -> None:
        response = await harness.client.get("/manage/projects", headers={"X-Request-ID": "abc-123.def"})
        assert response.headers["x-request-id"] == "abc-123.def"

    async def test_the_correlation_id_is_echoed_or_defaults_to_the_request_id(self, harness: Harness) -> None:
        given = await harness.client.get("/manage/projects", headers={"X-Correlation-ID": "flow-9"})
        assert given.headers["x-correlation-id"] == "flow-9"
        default = await harness.client.get("/manage/projects")
        assert default.headers["x-correlation-id"] == default.headers["x-request-id"]

    @pytest.mark.parametrize("given", ["", "has space", "x" * 129, "semi;colon"])
    async def test_a_malformed_client_id_is_replaced(self, harness: Harness, given: str) -> None:
        response = await harness.client.get("/manage/projects", headers={"X-Request-ID": given})
        generated = response.headers["x-request-id"]
        assert generated != given
        assert len(generated) == 36

    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/manage/projects"), ("GET", "/manage/nothing-here"), ("PUT", "/manage/tokens"),
         ("POST", "/manage/projects"), ("GET", "/manage/openapi.json")],
    )
    async def test_every_response_carries_one_request_id(self, harness: Harness, method: str, path: str) -> None:
        response = await harness.client.request(method, path, content=b"{")
        assert len(response.headers.get_list("x-request-id")) == 1


class TestRoutingErrors:
    async def test_an_unknown_path_is_404_json(self, harness: Harness) -> None:
        response = await harness.client.get("/manage/nothing-here")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "not found"}

    @pytest.mark.parametrize(
        ("method", "path", "allow"),
        [
            ("PUT", "/manage/projects", "GET, POST"),
            ("DELETE", "/manage/tokens", "GET, POST"),
            ("POST", "/manage/tokens/0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10", "DELETE, GET, PATCH"),
            ("OPTIONS", "/manage/audit", "GET"),
        ],
    )
    async def test_an_unsupported_method_is_405_with_allow(
        self, harness: Harness, method: str, path: str, allow: str
    ) -> None:
        response = await harness.client.request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == allow
        assert response.json() == {"error": "method not allowed"}

    async def test_trailing_slash_collections_answer_like_the_predecessor(self, harness: Harness) -> None:
        created = await harness.client.post("/manage/projects/", json={"name": "s", "api_key": "k" * 16})
        assert created.status_code == 201
        listed = await harness.client.get("/manage/projects/")
        assert [p["name"] for p in listed.json()] == ["s"]


class TestNoInternalErrors:
    @pytest.mark.parametrize(
        ("method", "path", "payload"),
        [
            ("PATCH", "/manage/projects/{project}", {"name": {"nested": True}}),
            ("PATCH", "/manage/projects/{project}", {"is_active": False, "revoke_tokens": "yes"}),
            ("POST", "/manage/tokens", {"project_id": ["x"], "duration_minutes": {"a": 1}}),
            ("POST", "/manage/tokens", {"project_id": "{project}", "duration_minutes": 10**30}),
            ("PATCH", "/manage/tokens/{token}", {"metadata": {"k": "\x00"}, "max_requests": None}),
            ("GET", "/manage/tokens?page_size=-1&page=99999999999999999999", None),
            ("GET", "/manage/audit?start_time=0000-01-01T00:00:00Z&end_time=9999-12-31T23:59:59-23:59", None),
        ],
    )
    async def test_odd_but_valid_json_never_causes_a_server_error(
        self, harness: Harness, method: str, path: str, payload: object
    ) -> None:
        project = await harness.create_project()
        token = await harness.create_token(project["id"])
        url = path.format(project=project["id"], token=token["id"])
        if isinstance(payload, dict):
            payload = {k: (v.format(project=project["id"]) if isinstance(v, str) else v)
                       for k, v in payload.items()}
        response = await harness.client.request(method, url, json=payload)
        assert response.status_code < 500, response.text
        assert response.headers["content-type"] == "application/json"
        assert "detail" not in response.json()


class TestFailures:
    async def test_a_failing_database_is_503_and_audited_as_error(self, harness: Harness) -> None:
        """The SQLite file disappears: the next query finds no tables (a real database failure)."""
        await harness.storage.engine.dispose()
        os.remove(harness.settings.storage.database_path)
        response = await harness.client.get("/manage/projects")
        assert response.status_code == 503
        assert response.json() == {"error": "database unavailable", "code": "storage_unavailable"}
        [entry] = await harness.audited("project.list")
        assert entry["result"] == "error"
        assert "no such table" in entry["details"]["reason"]

    async def test_an_unexpected_exception_is_a_500_json_with_a_request_id(
        self, harness: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def broken(**_: object) -> int:
            raise RuntimeError("bug")

        monkeypatch.setattr(harness.storage.projects, "count", broken)
        response = await harness.client.get("/manage/projects", headers={"X-Request-ID": "trace-1"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error"}
        assert response.headers["x-request-id"] == "trace-1"
        [entry] = await harness.audited("project.list")
        assert (entry["result"], entry["details"]["reason"]) == ("error", "unexpected RuntimeError")

    async def test_a_failing_change_hook_does_not_fail_the_committed_change(
        self, harness: Harness, caplog: pytest.LogCaptureFixture
    ) -> None:
        def explode(_: str) -> None:
            raise KeyError("cache")

        deps = harness.app.state.management
        harness.app.state.management = replace(deps, on_project_change=explode)
        response = await harness.client.post("/manage/projects", json={"name": "n", "api_key": "k" * 16})
        assert response.status_code == 201
        assert any("change hook" in record.getMessage() for record in caplog.records)
