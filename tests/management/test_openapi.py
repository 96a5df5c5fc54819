from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from tests.management.conftest import Harness

SOME_ID = "0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10"
ROUTING_ERRORS = ({"error": "not found"}, {"error": "method not allowed"})


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


async def _document(harness: Harness) -> dict[str, Any]:
    transport = harness.client._transport
    async with httpx.AsyncClient(transport=transport, base_url="http://manage.test") as anonymous:
        response = await anonymous.get("/manage/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


class TestOpenApiDocument:
    async def test_is_served_without_a_token(self, harness: Harness) -> None:
        document = await _document(harness)
        assert document["openapi"].startswith("3.1")
        assert document["components"]["securitySchemes"]["ManagementToken"] == {
            "type": "http", "scheme": "bearer",
            "description": "The value of MANAGEMENT_TOKEN, as `Authorization: Bearer <token>`.",
        }

    async def test_every_documented_operation_is_routed(self, harness: Harness) -> None:
        document = await _document(harness)
        operations = [(path, method) for path, item in document["paths"].items() for method in item]
        assert len(operations) == 12
        for path, method in operations:
            url = path.replace("{project_id}", SOME_ID).replace("{token_id}", SOME_ID)
            url = url.replace("{event_id}", SOME_ID)
            response = await harness.client.request(method.upper(), url, json={"is_active": False})
            assert response.json() not in ROUTING_ERRORS, (method, path)
            documented = document["paths"][path][method]["responses"]
            assert str(response.status_code) in documented, (method, path, response.status_code)

    async def test_documents_no_422_and_only_standard_keywords(self, harness: Harness) -> None:
        document = await _document(harness)
        assert "HTTPValidationError" not in document["components"]["schemas"]
        for node in _walk(document["paths"]):
            assert "422" not in node
            assert not {"ge", "le", "gt", "lt"} & set(node), node

    async def test_every_operation_is_secured_and_documents_error_bodies(self, harness: Harness) -> None:
        document = await _document(harness)
        for path, item in document["paths"].items():
            for method, operation in item.items():
                assert operation["security"] == [{"ManagementToken": []}], (method, path)
                for status in ("400", "401"):
                    schema = operation["responses"][status]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
                body = operation.get("requestBody")
                if body is not None:
                    ref = body["content"]["application/json"]["schema"]["$ref"]
                    assert ref.rsplit("/", 1)[1] in document["components"]["schemas"]
                    assert "413" in operation["responses"]

    async def test_optional_query_parameters_are_not_nullable(self, harness: Harness) -> None:
        document = await _document(harness)
        for item in document["paths"].values():
            for operation in item.values():
                for parameter in operation.get("parameters", []):
                    assert "anyOf" not in parameter["schema"], parameter
                    assert parameter["schema"].get("default", "") is not None

    async def test_swagger_ui_is_served(self, harness: Harness) -> None:
        response = await harness.client.get("/manage/docs")
        assert response.status_code == 200
        assert "/manage/openapi.json" in response.text
