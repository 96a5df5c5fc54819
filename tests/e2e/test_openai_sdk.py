"""The official `openai` SDK pointed at the proxy with a project token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI
from tests.live import LiveProxy, running_proxy


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveProxy]:
    async with running_proxy(tmp_path) as proxy:
        yield proxy


@pytest.fixture
async def client(live: LiveProxy) -> AsyncIterator[AsyncOpenAI]:
    _, token = await live.project_token()
    sdk = AsyncOpenAI(base_url=f"{live.url}/v1", api_key=token, max_retries=0)
    yield sdk
    await sdk.close()


class TestOpenAISdk:
    async def test_chat_completion(self, client: AsyncOpenAI) -> None:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.total_tokens > 0

    async def test_streamed_chat_completion_with_usage(self, client: AsyncOpenAI) -> None:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}], stream=True,
            stream_options={"include_usage": True})
        pieces: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(pieces)
        assert usage is not None and usage.completion_tokens > 0

    async def test_responses_api(self, client: AsyncOpenAI) -> None:
        response = await client.responses.create(model="gpt-4o-mini", input="Say hello")
        assert response.output_text
        assert response.usage is not None and response.usage.input_tokens > 0

    async def test_streamed_responses_api(self, client: AsyncOpenAI) -> None:
        stream = await client.responses.create(model="gpt-4o-mini", input="Say hello", stream=True)
        kinds = [event.type async for event in stream]
        assert "response.output_text.delta" in kinds
        assert kinds[-1] == "response.completed"

    async def test_embeddings(self, client: AsyncOpenAI) -> None:
        result = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(result.data) == 2 and len(result.data[0].embedding) > 0

    async def test_models(self, client: AsyncOpenAI) -> None:
        models = [model.id async for model in client.models.list()]
        assert models

    async def test_bad_token_raises_authentication_error(self, live: LiveProxy) -> None:
        sdk = AsyncOpenAI(base_url=f"{live.url}/v1", api_key="sk-" + "A" * 22, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        await sdk.close()
        assert info.value.code == "token_not_found"
