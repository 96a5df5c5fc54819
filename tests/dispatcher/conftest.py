"""Dispatcher fixtures: events with real OpenAI-shaped bodies, settings, Redis streams, moto."""

from __future__ import annotations

import asyncio
import gzip
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llm_proxy.dispatcher.tokens import TokenCounter
from llm_proxy.dispatcher.transform import Transformer
from llm_proxy.events import Event, encode_event
from llm_proxy.mock_upstream import responses, streams
from llm_proxy.mock_upstream.responses import Call
from llm_proxy.mock_upstream.textgen import Plan
from llm_proxy.settings import Settings, load_settings
from tests.fakes.moto import CREDENTIALS, MotoServer
from tests.services import require_service

T0 = datetime(2026, 11, 20, 12, 0, 0, 250000, tzinfo=UTC)
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream; charset=utf-8"}


def plan(words: int = 5, prompt_tokens: int = 7, cached: int = 0, reasoning: int = 0) -> Plan:
    return Plan(prompt_tokens=prompt_tokens, words=tuple(f"w{i}" for i in range(words)), finish_reason="stop",
                cached_tokens=cached, reasoning_tokens=reasoning)


CALL = Call(seq=1, created=1_790_000_000, model="gpt-4o-mini-2024-07-18")


def make_event(i: int = 0, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "request_id": f"req-{i}", "started_at": T0 + timedelta(seconds=i),
        "first_byte_at": T0 + timedelta(seconds=i, milliseconds=120),
        "ended_at": T0 + timedelta(seconds=i, milliseconds=400), "duration_ms": 400.0,
        "method": "POST", "path": "/v1/chat/completions", "status": 200, "provider": "openai",
        "model": "gpt-4o-mini", "project_id": "p-1", "token_id": "t-1",
        "token_metadata": {"user_id": "alice", "team": "search", "tags": ["beta"]}, "user_id": "alice",
        "request_headers": dict(JSON), "response_headers": dict(JSON),
        "request_body": orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        "response_body": orjson.dumps(responses.chat_completion(CALL, plan())),
    }
    values.update(fields)
    return Event(**values)


def chat_event(i: int = 0, *, stream: bool = False, include_usage: bool = True, p: Plan | None = None,
               **fields: Any) -> Event:
    p = p or plan()
    request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say it"}]}
    if not stream:
        values: dict[str, Any] = {"response_body": orjson.dumps(responses.chat_completion(CALL, p))}
    else:
        request |= {"stream": True, **({"stream_options": {"include_usage": True}} if include_usage else {})}
        values = {"stream": True, "response_headers": dict(SSE),
                  "response_body": b"".join(streams.chat_stream(CALL, p, 3, include_usage))}
    return make_event(i, **{"request_body": orjson.dumps(request), **values, **fields})


def responses_event(i: int = 0, *, stream: bool = True, p: Plan | None = None, **fields: Any) -> Event:
    p = p or plan()
    request = {"model": "gpt-4o-mini", "input": "say it", "instructions": "be brief", "stream": stream}
    if stream:
        body = b"".join(streams.response_stream(CALL, p, 3, request))
        headers = dict(SSE)
    else:
        body, headers = orjson.dumps(responses.response_object(CALL, p, request)), dict(JSON)
    values = {"path": "/v1/responses", "stream": stream, "request_body": orjson.dumps(request),
              "response_body": body, "response_headers": headers}
    return make_event(i, **{**values, **fields})


def gzipped(event: Event) -> Event:
    import msgspec

    return msgspec.structs.replace(event, response_body=gzip.compress(event.response_body), content_encoding="gzip")


def settings_with(**env: str) -> Settings:
    return load_settings({"LOG_LEVEL": "warning", "DISPATCHER_BACKOFF_BASE": "0.01",
                          "DISPATCHER_BACKOFF_MAX": "0.05", **env}, require_management_token=False)


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def redis_env() -> AsyncIterator[dict[str, str]]:
    """Environment for a Redis Streams bus on the shared Redis, with keys of this test only."""
    require_service("Redis", "127.0.0.1", 6379)
    key = f"test-dispatch-{uuid.uuid4().hex[:12]}"
    env = {"LLM_PROXY_EVENT_BUS": "redis-streams", "REDIS_URL": "redis://127.0.0.1:6379/0",
           "REDIS_STREAM_KEY": key, "REDIS_DEAD_LETTER_KEY": f"{key}-dead", "REDIS_STREAM_BLOCK_TIME": "0.2",
           "REDIS_STREAM_CLAIM_TIME": "3", "REDIS_STREAM_BATCH_SIZE": "100",
           "DISPATCHER_FLUSH_INTERVAL": "0.1", "DISPATCHER_TIMEOUT": "1"}
    yield env
    client = Redis.from_url(env["REDIS_URL"])
    await client.delete(key, f"{key}-dead")
    await client.aclose()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer) -> MotoServer:
    """Credentials for boto3 (read from the environment by boto3 itself) and the moto server."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return moto_server


@pytest.fixture(scope="session")
def transformer() -> Transformer:
    return Transformer(TokenCounter())


async def publish(env: dict[str, str], count: int, start: int = 0) -> list[str]:
    client = Redis.from_url(env["REDIS_URL"])
    events = [chat_event(i) for i in range(start, start + count)]
    for event in events:
        await client.xadd(env["REDIS_STREAM_KEY"], {"data": encode_event(event)})
    await client.aclose()
    return [e.event_id for e in events]


async def pending_and_dead(env: dict[str, str], group: str) -> tuple[int, int]:
    """(pending messages of `group`, -1 while the group does not exist; dead letters)."""
    client = Redis.from_url(env["REDIS_URL"])
    try:
        pending: Any = await client.xpending(env["REDIS_STREAM_KEY"], group)
    except ResponseError:
        pending = {"pending": -1}
    dead = await client.xlen(env["REDIS_DEAD_LETTER_KEY"])
    await client.aclose()
    return int(pending["pending"]), int(dead)
