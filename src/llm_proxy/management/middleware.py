"""ManagementMiddleware: request ids on every response, a body-size cap, and JSON for crashes.

Every response carries `X-Request-ID` (the client's when well formed, else a new UUIDv7) and
`X-Correlation-ID` (the client's when well formed, else the request id); both are put in
`scope["state"]` for the audit trail.

Pure ASGI. The body is read (up to the cap) before the app runs and replayed to it: management
bodies are small, and refusing an oversize one with 413 must not depend on whether the handler
reads it. A handler crash that escapes everything else becomes a 500 JSON error rather than
Starlette's plain-text page.
"""

from __future__ import annotations

import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy.clock import uuid7
from llm_proxy.errors import management_error_body

MAX_BODY_BYTES = 1024 * 1024
_WELL_FORMED_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_ID_HEADERS = frozenset({b"x-request-id", b"x-correlation-id"})

log = logging.getLogger("llm_proxy.management")


def client_id(headers: list[tuple[bytes, bytes]], header: bytes) -> str | None:
    """The value of `header` when it is a well-formed id, else None."""
    for name, value in headers:
        if name.lower() == header and _WELL_FORMED_ID.fullmatch(value):
            return value.decode("ascii")
    return None


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ManagementMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = client_id(scope["headers"], b"x-request-id") or str(uuid7())
        correlation_id = client_id(scope["headers"], b"x-correlation-id") or request_id
        state = scope.setdefault("state", {})
        state["request_id"], state["correlation_id"] = request_id, correlation_id
        ids = [(b"x-request-id", request_id.encode()), (b"x-correlation-id", correlation_id.encode())]
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", []) if h[0].lower() not in _ID_HEADERS]
                message = {**message, "headers": headers + ids}
            await send(message)

        body = await self._read_body(scope, receive)
        if body is None:
            await _send_error(send_with_id, 413, f"request body too large (limit {self.max_body_bytes} bytes)")
            return
        try:
            await self.app(scope, _replay(body, receive), send_with_id)
        except Exception:
            log.exception("management request %s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _send_error(send_with_id, 500, "internal error")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is (or declares to be) larger than the cap."""
        declared = _declared_length(scope["headers"])
        if declared is not None and declared > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_error(send: Send, status: int, message: str) -> None:
    body = management_error_body(message)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
    ]})
    await send({"type": "http.response.body", "body": body})
