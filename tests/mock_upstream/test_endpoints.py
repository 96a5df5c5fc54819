from __future__ import annotations

import json
import math

import aiohttp

from tests.mock_upstream.conftest import sse_data


class TestLegacyCompletions:
    async def test_echoes_the_prompt(self, client):
        payload = {"model": "gpt-3.5-turbo-instruct", "prompt": "say this please", "max_tokens": 4}
        body = await (await client.post("/v1/completions", json=payload)).json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == "say this please say"
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}

    async def test_stream_with_usage(self, client):
        payload = {
            "model": "m", "prompt": "a b c", "stream": True,
            "stream_options": {"include_usage": True},
        }
        data = sse_data(await (await client.post("/v1/completions", json=payload)).text())
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "a b c"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


class TestResponsesApi:
    async def test_response_object_with_detailed_usage(self, client):
        payload = {"model": "gpt-5", "instructions": "be kind", "input": "hello there"}
        headers = {"X-Mock-Cached-Tokens": "2", "X-Mock-Reasoning-Tokens": "10"}
        body = await (await client.post("/v1/responses", json=payload, headers=headers)).json()
        assert body["object"] == "response"
        assert body["status"] == "completed"
        assert body["output"][0]["content"][0]["text"] == "hello there"
        assert body["usage"] == {
            "input_tokens": 4,
            "input_tokens_details": {"cached_tokens": 2},
            "output_tokens": 12,
            "output_tokens_details": {"reasoning_tokens": 10},
            "total_tokens": 16,
        }

    async def test_stream_events_end_with_completed(self, client):
        payload = {"model": "gpt-5", "input": [{"role": "user", "content": "one two three"}],
                   "stream": True}
        text = await (await client.post("/v1/responses", json=payload)).text()
        events = [json.loads(d) for d in sse_data(text)]
        types = [e["type"] for e in events]
        assert types[:4] == [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.content_part.added",
        ]
        assert types.count("response.output_text.delta") == 4
        assert types[-1] == "response.completed"
        assert "[DONE]" not in text
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert text.count("event: response.output_text.delta\n") == 4
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert deltas == "one two three"
        assert events[-1]["response"]["usage"]["output_tokens"] == 3

    async def test_cut_by_max_output_tokens_is_incomplete(self, sdk):
        response = await sdk.responses.create(model="gpt-5", input="a b c d", max_output_tokens=2)
        assert response.status == "incomplete"
        assert response.output_text == "a b"

    async def test_sdk_stream(self, sdk):
        stream = await sdk.responses.create(model="gpt-5", input="stream me now", stream=True)
        deltas, final = [], None
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                final = event.response
        assert "".join(deltas) == "stream me now"
        assert final is not None
        assert final.usage is not None
        assert final.usage.total_tokens == 6


class TestEmbeddings:
    async def test_vectors_are_deterministic_unit_vectors(self, client):
        payload = {"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"],
                   "dimensions": 8}
        first = await (await client.post("/v1/embeddings", json=payload)).json()
        again = await (await client.post("/v1/embeddings", json=payload)).json()
        assert first["data"] == again["data"]
        vectors = [item["embedding"] for item in first["data"]]
        assert [len(v) for v in vectors] == [8, 8]
        assert vectors[0] != vectors[1]
        assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-9)
        assert first["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    async def test_sdk_decodes_base64_floats(self, sdk):
        result = await sdk.embeddings.create(model="text-embedding-3-large", input="hi")
        assert len(result.data[0].embedding) == 3072
        assert math.isclose(sum(x * x for x in result.data[0].embedding), 1.0, rel_tol=1e-4)

    async def test_bad_dimensions_is_a_400_naming_the_param(self, client):
        payload = {"model": "m", "input": "x", "dimensions": 0}
        response = await client.post("/v1/embeddings", json=payload)
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "dimensions"


class TestModels:
    async def test_list_and_one(self, sdk):
        listed = [m.id async for m in sdk.models.list()]
        assert "gpt-4.1-mini" in listed
        model = await sdk.models.retrieve("whisper-1")
        assert model.owned_by == "openai-internal"

    async def test_unknown_model_is_404(self, client):
        response = await client.get("/v1/models/no-such-model")
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "model_not_found"


class TestTranscriptions:
    async def test_sdk_multipart_upload(self, sdk):
        audio = ("clip.wav", b"RIFF" + b"\0" * 4000, "audio/wav")
        result = await sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio)
        assert result.text.startswith("mock transcription of ")

    async def test_text_format_is_plain_text(self, client):
        form = aiohttp.FormData()
        form.add_field("model", "whisper-1")
        form.add_field("response_format", "text")
        form.add_field("file", b"\x01\x02" * 100, filename="a.mp3")
        response = await client.post("/v1/audio/transcriptions", data=form)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert (await response.text()).startswith("mock transcription of ")
