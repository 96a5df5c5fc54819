"""The transformer on real OpenAI-shaped payloads: model, usage (reported or counted), cost."""

from __future__ import annotations

import orjson
import pytest

from llm_proxy.dispatcher.tokens import TokenCounter
from llm_proxy.dispatcher.transform import Transformer
from llm_proxy.mock_upstream import responses
from tests.dispatcher.conftest import CALL, chat_event, gzipped, make_event, plan, responses_event

# gpt-4o-mini in the genai-prices table: $0.15 / $0.60 per million input / output tokens, cached input $0.075.
IN, OUT, CACHED = 0.15e-6, 0.60e-6, 0.075e-6


@pytest.fixture(scope="module")
def transform() -> Transformer:
    return Transformer(TokenCounter())


class TestReportedUsage:
    def test_plain_chat_completion(self, transform: Transformer) -> None:
        record = transform(chat_event(p=plan(words=5, prompt_tokens=7)))
        event = record.event
        assert record.api == "chat"
        assert record.stream_text is None
        assert record.request["messages"][0]["content"] == "say it"
        assert record.response["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4"
        assert event.model == "gpt-4o-mini-2024-07-18"
        assert (event.input_tokens, event.output_tokens, event.total_tokens) == (7, 5, 12)
        assert not event.usage_estimated
        assert event.cost_known
        assert event.cost_usd == pytest.approx(7 * IN + 5 * OUT)

    def test_streamed_chat_takes_the_usage_chunk(self, transform: Transformer) -> None:
        p = plan(words=8, prompt_tokens=20, cached=12, reasoning=3)
        record = transform(chat_event(stream=True, p=p))
        event = record.event
        assert record.stream_text is not None
        assert record.stream_text.endswith("data: [DONE]\n\n")
        assert record.response["choices"][0]["message"]["content"] == p.text
        assert (event.input_tokens, event.output_tokens, event.cached_tokens, event.reasoning_tokens) == (20, 11, 12, 3)
        assert event.total_tokens == 31
        assert not event.usage_estimated
        assert event.cost_usd == pytest.approx(8 * IN + 12 * CACHED + 11 * OUT)

    def test_streamed_responses_api_takes_the_completed_event(self, transform: Transformer) -> None:
        p = plan(words=6, prompt_tokens=15, cached=5, reasoning=4)
        record = transform(responses_event(stream=True, p=p))
        event = record.event
        assert record.api == "responses"
        assert record.response["status"] == "completed"
        assert (event.input_tokens, event.output_tokens, event.cached_tokens, event.reasoning_tokens) == (15, 10, 5, 4)
        assert not event.usage_estimated
        assert event.cost_usd == pytest.approx(10 * IN + 5 * CACHED + 10 * OUT)

    def test_plain_responses_api(self, transform: Transformer) -> None:
        event = transform(responses_event(stream=False, p=plan(words=2, prompt_tokens=3))).event
        assert (event.input_tokens, event.output_tokens) == (3, 2)
        assert event.cost_known

    def test_gzip_compressed_response(self, transform: Transformer) -> None:
        record = transform(gzipped(chat_event(p=plan(words=3, prompt_tokens=4))))
        assert record.response["object"] == "chat.completion"
        assert record.event.output_tokens == 3

    def test_embeddings(self, transform: Transformer) -> None:
        body = responses.embeddings(CALL, {"input": ["a b c", "d"], "dimensions": 4})
        event = make_event(path="/v1/embeddings", request_body=orjson.dumps({"model": "text-embedding-3-small",
                                                                              "input": ["a b c", "d"]}),
                           response_body=orjson.dumps(body))
        record = transform(event)
        assert record.api == "embeddings"
        assert (record.event.input_tokens, record.event.output_tokens) == (4, 0)

    def test_usage_the_proxy_saw_is_kept_when_the_captured_body_was_cut(self, transform: Transformer) -> None:
        full = chat_event(stream=True).response_body
        event = chat_event(stream=True, response_body=full[:60], response_body_truncated=True,
                           input_tokens=40, output_tokens=9, total_tokens=49, cached_tokens=0, reasoning_tokens=0)
        record = transform(event)
        assert (record.event.input_tokens, record.event.output_tokens) == (40, 9)
        assert not record.event.usage_estimated


class TestEstimatedUsage:
    def test_stream_without_usage_is_counted_with_tiktoken(self, transform: Transformer) -> None:
        p = plan(words=9, prompt_tokens=99)
        record = transform(chat_event(stream=True, include_usage=False, p=p))
        event = record.event
        counter = TokenCounter()
        assert event.usage_estimated
        assert event.output_tokens == counter.count(p.text, "gpt-4o-mini")
        assert event.input_tokens == counter.count_messages([{"role": "user", "content": "say it"}], "gpt-4o-mini")
        assert event.cost_known
        assert event.cost_usd == pytest.approx(event.input_tokens * IN + event.output_tokens * OUT)

    def test_a_cut_responses_stream_is_estimated_from_its_deltas(self, transform: Transformer) -> None:
        event = responses_event(stream=True)
        cut = event.response_body[: len(event.response_body) // 2]
        record = transform(responses_event(stream=True, response_body=cut, response_body_truncated=True))
        assert record.event.usage_estimated
        assert record.event.input_tokens == TokenCounter().count(
            "be briefsay it", "gpt-4o-mini")


class TestNoUsage:
    def test_an_error_answer_has_no_usage_and_no_cost(self, transform: Transformer) -> None:
        body = orjson.dumps({"error": {"message": "bad", "type": "invalid_request_error", "param": None,
                                       "code": None}})
        event = transform(make_event(status=400, response_body=body, error="bad")).event
        assert event.input_tokens is None
        assert event.cost_usd is None
        assert not event.cost_known

    def test_an_unknown_model_is_marked_as_such(self, transform: Transformer) -> None:
        body = orjson.dumps({**responses.chat_completion(CALL, plan()), "model": "acme-llm-7"})
        event = transform(make_event(response_body=body)).event
        assert event.model == "acme-llm-7"
        assert event.input_tokens == 7
        assert event.cost_usd is None
        assert not event.cost_known

    def test_model_list_and_binary_bodies(self, transform: Transformer) -> None:
        record = transform(make_event(method="GET", path="/v1/models", request_body=b"",
                                      response_body=orjson.dumps(responses.model_list())))
        assert record.api == "models"
        assert record.event.input_tokens is None
        assert record.request is None
        speech = transform(make_event(path="/v1/audio/speech", response_headers={"content-type": "audio/mpeg"},
                                      response_body=b"ID3\x03\x00binary"))
        assert speech.response == "<binary body omitted: 11 bytes>"

    def test_transcription_multipart_request_and_token_usage(self, transform: Transformer) -> None:
        text, body = responses.transcription(b'name="model"\r\n\r\ngpt-4o-transcribe\r\n' + b"x" * 3000)
        assert body is not None
        event = make_event(path="/v1/audio/transcriptions", model="gpt-4o-transcribe",
                           request_headers={"content-type": "multipart/form-data; boundary=b"},
                           request_body=b"--b\r\n...", response_body=orjson.dumps(body))
        record = transform(event)
        assert record.request.startswith("<multipart body omitted")
        assert record.response["text"] == text
        assert record.event.model == "gpt-4o-transcribe"
        assert record.event.output_tokens == body["usage"]["output_tokens"]
