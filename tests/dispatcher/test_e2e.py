"""End to end: proxy → Redis Streams → one dispatcher per sink → every call in every sink, exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from llm_proxy.dispatcher.runner import serve
from llm_proxy.dispatcher.tokens import TokenCounter
from tests.dispatcher.conftest import eventually, settings_with
from tests.fakes.helicone import FakeHelicone
from tests.fakes.lunary import FakeLunary
from tests.fakes.moto import MotoServer
from tests.live import LiveProxy, running_proxy

pytestmark = pytest.mark.redis

PROMPT = "alpha beta gamma delta"
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
RESPONSES = {"model": "gpt-4o-mini", "instructions": "be brief", "input": "one two three", "stream": True}
IN, OUT, CACHED = 0.15e-6, 0.60e-6, 0.075e-6


def expected_usage() -> dict[str, tuple[int, int, int, int, bool]]:
    """request id → (input, output, cached, reasoning, estimated), from the mock upstream's rules."""
    counter = TokenCounter()
    return {
        "e2e-chat": (4, 4, 0, 0, False),
        "e2e-chat-stream": (4, 4 + 2, 3, 2, False),
        "e2e-responses-stream": (5, 3 + 1, 0, 1, False),
        "e2e-chat-gzip": (4, 4, 0, 0, False),
        "e2e-chat-stream-no-usage": (counter.count_messages(CHAT["messages"], "gpt-4o-mini"),
                                     counter.count(PROMPT, "gpt-4o-mini"), 0, 0, True),
    }


async def make_calls(live: LiveProxy) -> None:
    _, token = await live.project_token(metadata={"user_id": "alice", "team": "search"})
    auth = {"Authorization": f"Bearer {token}"}
    calls: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
        ("e2e-chat", "/v1/chat/completions", CHAT, {}),
        ("e2e-chat-stream", "/v1/chat/completions",
         {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
         {"X-Mock-Cached-Tokens": "3", "X-Mock-Reasoning-Tokens": "2"}),
        ("e2e-responses-stream", "/v1/responses", RESPONSES, {"X-Mock-Reasoning-Tokens": "1"}),
        ("e2e-chat-gzip", "/v1/chat/completions", CHAT, {"X-Mock-Gzip": "1", "Accept-Encoding": "gzip"}),
        ("e2e-chat-stream-no-usage", "/v1/chat/completions", {**CHAT, "stream": True}, {}),
    ]
    for request_id, path, body, headers in calls:
        async with live.http.post(f"{live.url}{path}", json=body,
                                  headers={**auth, **headers, "X-Request-ID": request_id}) as response:
            assert response.status == 200, await response.text()
            await response.read()


def check(usage: tuple[int, int, int, int, bool], tokens: tuple[Any, ...], what: str) -> None:
    assert tokens == usage[:len(tokens)], f"{what}: {tokens} != {usage}"


async def test_every_call_arrives_in_every_sink(tmp_path: Path, redis_env: dict[str, str], aws: MotoServer) -> None:
    expected = expected_usage()
    group = f"/llm-proxy/e2e-{tmp_path.name[-8:]}"
    async with FakeLunary() as lunary, FakeHelicone() as helicone, running_proxy(tmp_path, redis_env) as live:
        await make_calls(live)
        stop = asyncio.Event()
        # Generous timeouts: on a loaded 2-core machine a local fake sink can take over a second.
        common = {**redis_env, "DISPATCHER_FLUSH_INTERVAL": "0.1", "CLOUDWATCH_LOG_GROUP": group,
                  "DISPATCHER_TIMEOUT": "10", "REDIS_STREAM_CLAIM_TIME": "60"}
        per_sink = {
            "file": {"DISPATCHER_ENDPOINT": str(tmp_path / "sink.jsonl")},
            "lunary": {"LUNARY_API_URL": lunary.url, "LUNARY_PUBLIC_KEY": lunary.key},
            "helicone": {"HELICONE_API_URL": helicone.url, "HELICONE_API_KEY": helicone.key},
            "cloudwatch": {"CLOUDWATCH_ENDPOINT": aws.url, "CLOUDWATCH_LOG_STREAM": "e2e"},
        }
        tasks = [asyncio.create_task(serve(settings_with(**common, DISPATCHER_SERVICE=name, **env), stop))
                 for name, env in per_sink.items()]
        client: Any = aws.client()

        def cloudwatch_messages() -> list[dict[str, Any]]:
            try:
                found = client.get_log_events(logGroupName=group, logStreamName="e2e", startFromHead=True)
            except client.exceptions.ResourceNotFoundException:
                return []
            return [orjson.loads(e["message"]) for e in found["events"]]

        def file_docs() -> list[dict[str, Any]]:
            path = tmp_path / "sink.jsonl"
            return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []

        await eventually(lambda: len(file_docs()) == 5 and len(helicone.records) == 5
                         and sum("end" in run for run in lunary.runs.values()) == 5
                         and len(cloudwatch_messages()) == 5, within=60)
        stop.set()
        await asyncio.gather(*tasks)

    assert lunary.problems == []
    assert helicone.problems == []
    assert len(file_docs()) == 5
    assert list(helicone.posts.values()) == [1] * 5
    for doc in file_docs():
        usage = expected[doc["request_id"]]
        check(usage, (doc["input_tokens"], doc["output_tokens"], doc["cached_tokens"], doc["reasoning_tokens"],
                      doc["usage_estimated"]), f"file {doc['request_id']}")
        assert doc["cost_known"]
        assert doc["cost_usd"] == pytest.approx(
            (usage[0] - usage[2]) * IN + usage[2] * CACHED + usage[1] * OUT)
        assert doc["user_id"] == "alice"
        assert doc["model"] == "gpt-4o-mini"
    for doc in cloudwatch_messages():
        usage = expected[doc["request_id"]]
        check(usage, (doc["input_tokens"], doc["output_tokens"]), f"cloudwatch {doc['request_id']}")
        assert "request_body" not in doc
        assert doc["response"] is not None
    for run in lunary.runs.values():
        usage = expected[run["start"]["metadata"]["request_id"]]
        tokens = run["end"]["tokensUsage"]
        check(usage, (tokens["prompt"], tokens["completion"], tokens.get("promptCached", 0)), "lunary")
        assert run["start"]["userId"] == "alice"
        assert run["start"]["userProps"] == {"team": "search"}
    for record in helicone.records.values():
        request_id = record["headers"]["Helicone-Property-Proxy-Request-Id"]
        response = record["body"]["providerResponse"]
        assert record["headers"]["Helicone-User-Id"] == "alice"
        if request_id.startswith("e2e-chat-stream") or request_id == "e2e-responses-stream":
            assert "data:" in response["textBody"]
            assert record["body"]["timing"]["timeToFirstToken"] >= 0
        else:
            assert response["json"]["usage"]["prompt_tokens"] == expected[request_id][0]
