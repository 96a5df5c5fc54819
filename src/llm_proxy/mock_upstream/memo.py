"""Rendered replies of repeated identical requests.

Benchmarks send one request body thousands of times a second, and rendering the JSON would
make the mock, not the proxy under test, the bottleneck. A request without `X-Mock-*`
headers is answered from a reply rendered once per (method, target, authorization, body,
second), with the call's sequence number spliced into its ids, so ids stay distinct and
`created` stays current. Streams are always rendered afresh.
"""

from __future__ import annotations

from llm_proxy.mock_upstream.hooks import MockOptions
from llm_proxy.mock_upstream.routes import Reply, Request, handle

TEMPLATE_SEQ = 0
"""The sequence number a template is rendered with; real calls count from 1."""
MARK = b"mock%010d" % TEMPLATE_SEQ

Key = tuple[str, str, str | None, bytes, int]
Entry = tuple[Reply, list[bytes]] | None
"""A template and its body split at MARK; None for a request that is answered by a stream."""


class ReplyMemo:
    def __init__(self, options: MockOptions, capacity: int = 512) -> None:
        self._options = options
        self._capacity = capacity
        self._entries: dict[Key, Entry] = {}

    def reply(self, request: Request, seq: int, now: int) -> Reply:
        if request.hooked or MARK in request.body:
            return handle(request, self._options, seq, now)
        key = (request.method, request.target, request.headers.get("authorization"),
               request.body, now)
        try:
            entry = self._entries[key]
        except KeyError:
            entry = self._render(key, request, now)
        if entry is None:
            return handle(request, self._options, seq, now)
        template, parts = entry
        body = (b"mock%010d" % seq).join(parts) if len(parts) > 1 else template.body
        return Reply(template.status, body, template.content_type, latency=template.latency)

    def _render(self, key: Key, request: Request, now: int) -> Entry:
        template = handle(request, self._options, TEMPLATE_SEQ, now)
        entry = None if template.frames is not None else (template, template.body.split(MARK))
        if len(self._entries) >= self._capacity:
            self._entries.clear()
        self._entries[key] = entry
        return entry
