"""A bundled OpenAI-compatible upstream for the quickstart, tests and benchmarks.

Endpoints: `POST /v1/chat/completions`, `/v1/completions`, `/v1/responses` (each streamed or
not), `/v1/embeddings`, `/v1/audio/transcriptions`; `GET /v1/models`, `/v1/models/{id}`, and
`GET /health` (no auth). Every other call needs `Authorization: Bearer <any key>` (or exactly
`api_key` when one is configured). Replies are deterministic: see `textgen` for how the
text and the token counts follow from the request, `hooks` for the `X-Mock-*` test headers,
`streams` for the frame sequence of each stream. Every reply carries `x-request-id` (the
received `X-Request-ID`, else `req_mock<seq>`); ids embed a per-server sequence number, so two
upstream calls never share an id.

    async with await start_mock(chunks=4) as mock:      # on the running loop
        ... mock.url, mock.base_url ...
    with ThreadedMock() as mock:                       # own loop in a thread
        ...
"""

from llm_proxy.mock_upstream.hooks import MockOptions
from llm_proxy.mock_upstream.server import MockServer, serve, start_mock
from llm_proxy.mock_upstream.threaded import ThreadedMock

__all__ = ["MockOptions", "MockServer", "ThreadedMock", "serve", "start_mock"]
