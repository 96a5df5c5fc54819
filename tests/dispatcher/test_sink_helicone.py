"""HeliconeSink against a fake Helicone logger that validates like the worker."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import pytest

from llm_proxy.dispatcher.backoff import BackoffPolicy
from llm_proxy.dispatcher.delivery import RetryingSink
from llm_proxy.dispatcher.sinks import SinkPartialError, SinkRejectedError, SinkRetryableError
from llm_proxy.dispatcher.sinks.helicone import HeliconeSink, header_value
from llm_proxy.dispatcher.transform import Transformer
from tests.dispatcher.conftest import chat_event, make_event, plan, responses_event
from tests.fakes.helicone import FakeHelicone

FAST = BackoffPolicy(base=0.01, cap=0.02, max_retries=3, rng=random.Random(5))


@pytest.fixture
async def helicone() -> AsyncIterator[FakeHelicone]:
    async with FakeHelicone() as server:
        yield server


class TestHeliconeSink:
    async def test_records_are_valid_and_carry_identity_timing_and_usage(self, helicone: FakeHelicone,
                                                                         transformer: Transformer) -> None:
        sink = HeliconeSink(helicone.url, helicone.key)
        p = plan(words=4, prompt_tokens=6)
        plain, streamed = transformer(chat_event(0, p=p)), transformer(chat_event(1, stream=True, p=p))
        await sink.send([plain, streamed, transformer(responses_event(2))])
        await sink.aclose()
        assert helicone.problems == []
        assert len(helicone.records) == 3
        first = helicone.by_event(plain.id)
        body, headers = first["body"], first["headers"]
        assert first["route"] == "/oai/v1/log"
        assert body["providerResponse"]["json"]["usage"]["prompt_tokens"] == 6
        assert body["providerRequest"]["meta"]["Helicone-User-Id"] == "alice" == headers["Helicone-User-Id"]
        assert headers["Helicone-Property-team"] == "search"
        assert headers["Helicone-Property-Project-Id"] == "p-1"
        assert uuid.UUID(headers["Helicone-Request-Id"]).version == 5
        assert body["timing"]["endTime"]["seconds"] * 1000 + body["timing"]["endTime"]["milliseconds"] >= (
            body["timing"]["startTime"]["seconds"] * 1000 + body["timing"]["startTime"]["milliseconds"])
        stream = helicone.by_event(streamed.id)["body"]
        assert stream["providerResponse"]["textBody"].endswith("data: [DONE]\n\n")
        assert stream["providerResponse"]["json"] == {}
        assert stream["timing"]["timeToFirstToken"] == 120

    async def test_the_same_call_always_gets_the_same_helicone_id(self, helicone: FakeHelicone,
                                                                  transformer: Transformer) -> None:
        sink = HeliconeSink(helicone.url + "/custom/v1/log", helicone.key)
        record = transformer(chat_event(0))
        await sink.send([record])
        await sink.send([record])
        await sink.aclose()
        assert list(helicone.posts.values()) == [2]

    async def test_non_openai_calls_use_the_custom_route_and_gets_are_skipped(
            self, helicone: FakeHelicone, transformer: Transformer) -> None:
        sink = HeliconeSink(helicone.url, helicone.key)
        speech = make_event(path="/v1/audio/speech", response_headers={"content-type": "audio/mpeg"},
                            response_body=b"ID3\x00")
        await sink.send([transformer(speech), transformer(make_event(method="GET", path="/v1/models"))])
        await sink.aclose()
        assert helicone.problems == []
        assert len(helicone.records) == 1
        record = helicone.by_event(speech.event_id)
        assert record["route"] == "/custom/v1/log"
        assert record["body"]["providerResponse"]["textBody"] == "<binary body omitted: 4 bytes>"

    async def test_a_retry_resends_only_the_failed_records(self, helicone: FakeHelicone,
                                                           transformer: Transformer) -> None:
        records = [transformer(chat_event(i)) for i in range(4)]
        helicone.fail_events[records[1].id] = [503, 500]
        helicone.store_errors.add(records[2].id)
        sink = HeliconeSink(helicone.url, helicone.key)
        with pytest.raises(SinkPartialError) as caught:
            await sink.send(records)
        assert sorted(caught.value.failures) == [1, 2]
        await RetryingSink(sink, FAST).send([records[1], records[2]])
        await sink.aclose()
        assert helicone.problems == []
        assert sorted(helicone.posts.values()) == [1, 1, 1, 1]

    async def test_statuses_map_to_typed_errors(self, helicone: FakeHelicone, transformer: Transformer) -> None:
        sink = HeliconeSink(helicone.url, helicone.key)
        records = [transformer(chat_event(i)) for i in range(2)]
        helicone.fail_statuses = [429, 400]
        with pytest.raises(SinkPartialError) as caught:
            await sink.send(records)
        kinds = sorted(type(e).__name__ for e in caught.value.failures.values())
        assert kinds == [SinkRejectedError.__name__, SinkRetryableError.__name__]
        await sink.aclose()


def test_header_values_are_made_latin1_safe() -> None:
    assert header_value("plain value") == "plain value"
    assert header_value(True) == "true"
    assert header_value("Zoë\r\nX-Evil: 1") == "Zo%C3%AB%0D%0AX-Evil: 1"
