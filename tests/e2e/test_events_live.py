"""Every proxied call becomes exactly one event with the right fields, and no secret in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from tests.live import LiveProxy, running_proxy

from llm_proxy.events import Event, decode_event

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count my words please"}]}


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveProxy]:
    async with running_proxy(tmp_path, {"FILE_EVENT_LOG": str(tmp_path / "events.jsonl")}) as proxy:
        yield proxy


async def collect(live: LiveProxy, count: int, within: float = 5.0) -> list[Event]:
    """Read the file event log until it holds `count` events."""
    path = live.tmp / "events.jsonl"
    deadline = asyncio.get_running_loop().time() + within
    while True:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= count or asyncio.get_running_loop().time() > deadline:
            return [decode_event(line) for line in lines]
        await asyncio.sleep(0.05)


class TestEvents:
    async def test_one_event_per_call_with_identity_timing_and_usage(self, live: LiveProxy) -> None:
        project, token = await live.project_token(metadata={"user_id": "alice", "team": "search"})
        headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "evt-1"}
        async with live.http.post(f"{live.url}/v1/chat/completions?trace=1", json=CHAT, headers=headers) as r:
            body = await r.json()
            assert r.status == 200
        stream_body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with live.http.post(f"{live.url}/v1/chat/completions", json=stream_body,
                                  headers={**headers, "X-Request-ID": "evt-2"}) as r:
            await r.read()
        events = await collect(live, 2)
        assert [e.request_id for e in events] == ["evt-1", "evt-2"]
        first, second = events
        assert first.project_id == project["id"] and first.token_id and first.token_id != token
        assert first.user_id == "alice" and first.token_metadata == {"user_id": "alice", "team": "search"}
        assert (first.method, first.path, first.query, first.status) == ("POST", "/v1/chat/completions", "trace=1", 200)
        assert first.model == "gpt-4o-mini" and not first.stream and second.stream
        assert first.input_tokens == body["usage"]["prompt_tokens"]
        assert first.output_tokens == body["usage"]["completion_tokens"]
        assert second.output_tokens and second.output_tokens > 0
        assert first.upstream_ms is not None and 0 <= first.upstream_ms <= first.duration_ms
        assert first.started_at <= first.ended_at and first.first_byte_at is not None
        assert orjson.loads(first.request_body)["model"] == "gpt-4o-mini"
        assert orjson.loads(first.response_body)["id"] == body["id"]
        assert second.response_body.rstrip().endswith(b"data: [DONE]")
        assert len({e.event_id for e in events}) == 2

    async def test_rejections_are_events_too(self, live: LiveProxy) -> None:
        async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT,
                                  headers={"Authorization": "Bearer sk-" + "A" * 22}) as r:
            assert r.status == 401
        (event,) = await collect(live, 1)
        assert event.status == 401 and event.error_code == "token_not_found" and event.token_id is None

    async def test_no_secret_reaches_an_event(self, live: LiveProxy) -> None:
        _, token = await live.project_token()
        headers = {"Authorization": f"Bearer {token}", "X-Mock-Echo-Headers": "1", "Cookie": "session=s3cr3t"}
        async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 200
        raw = (live.tmp / "events.jsonl").read_bytes() if (await collect(live, 1)) else b""
        assert token.encode() not in raw
        assert b"sk-mock-upstream-key" not in raw
        assert b"s3cr3t" not in raw

    async def test_bodies_are_capped_and_flagged(self, tmp_path: Path) -> None:
        env = {"FILE_EVENT_LOG": str(tmp_path / "events.jsonl"), "OBSERVABILITY_MAX_REQUEST_BODY_BYTES": "64",
               "OBSERVABILITY_MAX_RESPONSE_BODY_BYTES": "100"}
        async with running_proxy(tmp_path, env) as live:
            _, token = await live.project_token()
            big = {**CHAT, "messages": [{"role": "user", "content": "word " * 200}]}
            async with live.http.post(f"{live.url}/v1/chat/completions", json=big,
                                      headers={"Authorization": f"Bearer {token}"}) as r:
                full = await r.read()
            (event,) = await collect(live, 1)
        assert len(event.request_body) == 64 and event.request_body_truncated
        assert event.response_body == full[:100] and event.response_body_truncated

    async def test_client_disconnect_mid_stream_is_recorded(self, live: LiveProxy) -> None:
        _, token = await live.project_token()
        body = {**CHAT, "stream": True}
        headers = {"Authorization": f"Bearer {token}", "X-Mock-Chunk-Delay-Ms": "200", "X-Mock-Chunks": "20"}
        async with live.http.post(f"{live.url}/v1/chat/completions", json=body, headers=headers) as r:
            await r.content.readany()
            r.close()
        (event,) = await collect(live, 1)
        assert event.client_disconnected
        assert event.duration_ms < 3000, "the upstream stream was not cancelled with the client"

    async def test_disabled_observability_publishes_nothing(self, tmp_path: Path) -> None:
        env = {"FILE_EVENT_LOG": str(tmp_path / "events.jsonl"), "OBSERVABILITY_ENABLED": "false"}
        async with running_proxy(tmp_path, env) as live:
            _, token = await live.project_token()
            async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT,
                                      headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
            assert await collect(live, 1, within=0.5) == []
