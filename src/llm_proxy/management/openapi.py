"""The OpenAPI document, corrected to say what the code does.

FastAPI's generator documents a 422 `detail` response we never send (validation failures are
400 `{"error": ...}`) and writes optional query parameters as `string | null`, which a query
string cannot express. The request bodies are parsed by the handlers, so their schemas are added
here from the request models.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from llm_proxy.management.schemas import REQUEST_MODELS

_UNUSED_COMPONENTS = ("HTTPValidationError", "ValidationError")


def finish_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in _UNUSED_COMPONENTS:
        components.pop(name, None)
    _, defs = models_json_schema(
        [(model, "validation") for model in REQUEST_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    components.update(defs.get("$defs", {}))
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
            for parameter in operation.get("parameters", []):
                _plain_parameter(parameter["schema"])
    return schema


def _plain_parameter(schema: dict[str, Any]) -> None:
    branches = schema.pop("anyOf", None)
    for branch in branches or ():
        if branch.get("type") != "null":
            schema.update(branch)
    if "default" in schema and schema["default"] is None:
        del schema["default"]
