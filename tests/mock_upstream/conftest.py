from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from llm_proxy.mock_upstream import MockServer, start_mock

AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    server = await start_mock(chunks=4)
    yield server
    await server.close()


@pytest.fixture
async def client(mock: MockServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=mock.url, headers=AUTH) as session:
        yield session


@pytest.fixture
async def sdk(mock: MockServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK pointed at the mock; no retries, so hooked errors surface at once."""
    sdk = openai.AsyncOpenAI(base_url=mock.base_url, api_key="sk-test", max_retries=0)
    yield sdk
    await sdk.close()


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
