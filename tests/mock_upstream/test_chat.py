from __future__ import annotations

import json

from tests.mock_upstream.conftest import sse_data

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "tell me about the sea"},
]


class TestChatCompletions:
    async def test_reply_echoes_the_last_user_message_with_word_usage(self, client):
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4.1-mini", "messages": MESSAGES}
        )
        body = await response.json()
        assert response.status == 200
        assert body["object"] == "chat.completion"
        assert body["model"] == "gpt-4.1-mini"
        choice = body["choices"][0]
        assert choice["message"] == {
            "role": "assistant", "content": "tell me about the sea", "refusal": None,
            "annotations": [],
        }
        assert choice["finish_reason"] == "stop"
        usage = body["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
            8, 5, 13,
        )
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
        assert usage["completion_tokens_details"]["reasoning_tokens"] == 0

    async def test_max_tokens_sets_the_reply_length(self, client):
        payload = {"model": "m", "messages": MESSAGES, "max_tokens": 7}
        body = await (await client.post("/v1/chat/completions", json=payload)).json()
        assert body["choices"][0]["message"]["content"] == "tell me about the sea tell me"
        assert body["usage"]["completion_tokens"] == 7
        payload = {"model": "m", "messages": MESSAGES, "max_completion_tokens": 2}
        body = await (await client.post("/v1/chat/completions", json=payload)).json()
        assert body["choices"][0]["finish_reason"] == "length"

    async def test_each_call_gets_its_own_id_and_request_id(self, client):
        payload = {"model": "m", "messages": MESSAGES}
        first = await client.post("/v1/chat/completions", json=payload)
        second = await client.post(
            "/v1/chat/completions", json=payload, headers={"X-Request-ID": "abc-123"}
        )
        ids = {(await first.json())["id"], (await second.json())["id"]}
        assert len(ids) == 2
        assert all(i.startswith("chatcmpl-mock") for i in ids)
        assert first.headers["X-Request-ID"].startswith("req_mock")
        assert second.headers["X-Request-ID"] == "abc-123"

    async def test_stream_sends_role_content_finish_and_done(self, client):
        payload = {"model": "m", "messages": MESSAGES, "stream": True}
        response = await client.post("/v1/chat/completions", json=payload)
        assert response.headers["Content-Type"].startswith("text/event-stream")
        data = sse_data(await response.text())
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert len(chunks) == 1 + 4 + 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == "tell me about the sea"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert all("usage" not in c for c in chunks)

    async def test_include_usage_adds_a_final_usage_chunk(self, client):
        payload = {
            "model": "m", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = await client.post(
            "/v1/chat/completions", json=payload, headers={"X-Mock-Chunks": "2"}
        )
        chunks = [json.loads(d) for d in sse_data(await response.text())[:-1]]
        assert len(chunks) == 1 + 2 + 1 + 1
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] == 13


class TestWithOpenAISdk:
    async def test_create_parses_into_sdk_types(self, sdk):
        completion = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert completion.choices[0].message.content == "tell me about the sea"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == 8

    async def test_stream_with_usage(self, sdk):
        stream = await sdk.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(pieces) == "tell me about the sea"
        assert usage is not None
        assert usage.completion_tokens == 5
