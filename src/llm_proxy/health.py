"""Probes: /health (process up), /ready (dependencies answer), /live (event loop responsive)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from llm_proxy import __version__

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]


async def send_json(send: Any, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class HealthEndpoints:
    """Answers the three probe paths.

    `checks` maps a name to (check, required). A failing required check makes /ready 503; a
    failing optional one (e.g. Redis for the event bus, which spools to disk meanwhile) only
    marks the proxy `degraded`.
    """

    paths = frozenset({"/health", "/ready", "/live"})

    def __init__(self, checks: dict[str, tuple[ReadyCheck, bool]]) -> None:
        self.checks = checks

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/health":
            await send_json(send, 200, {"status": "ok", "version": __version__,
                                        "timestamp": datetime.now(UTC).isoformat()})
        elif path == "/live":
            await send_json(send, 200, {"status": "alive"})
        else:
            await self._ready(send)

    async def _ready(self, send: Any) -> None:
        names = list(self.checks)
        results = await asyncio.gather(*(_guarded(self.checks[n][0]) for n in names))
        checks = {n: {"ok": ok, "detail": detail, "required": self.checks[n][1]}
                  for n, (ok, detail) in zip(names, results, strict=True)}
        required_ok = all(c["ok"] for c in checks.values() if c["required"])
        all_ok = all(c["ok"] for c in checks.values())
        status = "ready" if all_ok else ("degraded" if required_ok else "not_ready")
        await send_json(send, 200 if required_ok else 503, {"status": status, "checks": checks})


async def _guarded(check: ReadyCheck) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(2.0):
            return await check()
    except Exception as exc:  # a probe must answer, whatever a dependency does
        return False, f"{type(exc).__name__}: {exc}"
