"""A custom handler module as docs/telemetry.md shows one (TELEMETRY_HANDLERS=module:install)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_proxy.telemetry import Telemetry

SLOW_CALLS: list[str] = []


def note_slow_calls(name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any], config: Any) -> None:
    if measurements["duration"] > config["seconds"]:
        SLOW_CALLS.append(metadata["request_id"])


def install(telemetry: Telemetry) -> None:
    telemetry.attach("slow-calls", "llm_proxy.proxy.request.stop", note_slow_calls, {"seconds": 0.0})
