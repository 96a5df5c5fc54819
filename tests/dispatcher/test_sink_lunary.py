"""LunarySink against a fake Lunary that validates like the real server."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from llm_proxy.dispatcher.backoff import BackoffPolicy
from llm_proxy.dispatcher.delivery import RetryingSink, SplittingSink
from llm_proxy.dispatcher.sinks import SinkPartialError, SinkRejectedError, SinkRetryableError, SinkTooLargeError
from llm_proxy.dispatcher.sinks.lunary import LunarySink
from llm_proxy.dispatcher.transform import Transformer
from tests.dispatcher.conftest import chat_event, make_event, plan, responses_event
from tests.fakes.lunary import FakeLunary

FAST = BackoffPolicy(base=0.01, cap=0.02, max_retries=3, rng=random.Random(3))


@pytest.fixture
async def lunary() -> AsyncIterator[FakeLunary]:
    async with FakeLunary() as server:
        yield server


class TestLunarySink:
    async def test_each_call_is_a_valid_start_end_pair(self, lunary: FakeLunary, transformer: Transformer) -> None:
        sink = LunarySink(lunary.url, lunary.key)
        p = plan(words=4, prompt_tokens=9, cached=2)
        records = [transformer(chat_event(0, stream=True, p=p)), transformer(responses_event(1, p=p))]
        await sink.send(records)
        await sink.aclose()
        assert lunary.problems == []
        run = lunary.runs[records[0].id]
        start, end = run["start"], run["end"]
        assert start["type"] == "llm"
        assert start["name"] == "gpt-4o-mini-2024-07-18"
        assert start["input"] == [{"role": "user", "content": "say it"}]
        assert start["userId"] == "alice"
        assert start["userProps"] == {"team": "search"}
        assert start["tags"] == ["beta"]
        assert start["metadata"]["project_id"] == "p-1"
        assert start["metadata"]["cost_known"] is True
        assert end["output"]["content"] == p.text
        assert end["tokensUsage"] == {"prompt": 9, "completion": 4, "promptCached": 2}
        assert lunary.runs[records[1].id]["start"]["input"][0] == {"role": "system", "content": "be brief"}

    async def test_redelivery_updates_the_run_instead_of_failing(self, lunary: FakeLunary,
                                                                 transformer: Transformer) -> None:
        sink = LunarySink(lunary.url + "/v1/runs/ingest", lunary.key)
        record = transformer(chat_event(0))
        await sink.send([record])
        await sink.send([record])
        await sink.aclose()
        assert lunary.problems == []
        assert list(lunary.runs) == [record.id]
        assert len(lunary.calls) == 2

    async def test_failed_calls_become_error_runs(self, lunary: FakeLunary, transformer: Transformer) -> None:
        sink = LunarySink(lunary.url, lunary.key)
        failed = make_event(status=500, error="upstream 500",
                            response_body=b'{"error": {"message": "The server had an error", "type": "server_error"}}')
        await sink.send([transformer(failed), transformer(make_event(method="GET", path="/v1/models"))])
        await sink.aclose()
        assert lunary.problems == []
        assert list(lunary.runs) == [failed.event_id]
        assert lunary.runs[failed.event_id]["error"]["error"] == {"message": "The server had an error"}

    async def test_per_event_failures_are_reported_and_retried_alone(self, lunary: FakeLunary,
                                                                     transformer: Transformer) -> None:
        records = [transformer(chat_event(i)) for i in range(3)]
        lunary.fail_runs[records[1].id] = 1
        sink = LunarySink(lunary.url, lunary.key)
        with pytest.raises(SinkPartialError) as caught:
            await sink.send(records)
        assert list(caught.value.failures) == [1]
        assert isinstance(caught.value.failures[1], SinkRetryableError)
        await RetryingSink(sink, FAST).send([records[1]])
        await sink.aclose()
        assert lunary.problems == []
        assert all("end" in lunary.runs[r.id] for r in records)

    async def test_statuses_map_to_typed_errors(self, lunary: FakeLunary, transformer: Transformer) -> None:
        sink = LunarySink(lunary.url, lunary.key)
        record = transformer(chat_event(0))
        lunary.fail_statuses, lunary.retry_after = [429, 503, 400], "7"
        with pytest.raises(SinkRetryableError) as limited:
            await sink.send([record])
        assert limited.value.retry_after == 7.0
        with pytest.raises(SinkRetryableError):
            await sink.send([record])
        with pytest.raises(SinkRejectedError):
            await sink.send([record])
        bad_key = LunarySink(lunary.url, "wrong")
        with pytest.raises(SinkRejectedError, match="401"):
            await bad_key.send([record])
        await sink.aclose()
        await bad_key.aclose()

    async def test_too_large_requests_are_split(self, lunary: FakeLunary, transformer: Transformer) -> None:
        lunary.max_events = 4
        sink = LunarySink(lunary.url, lunary.key)
        records = [transformer(chat_event(i)) for i in range(5)]
        with pytest.raises(SinkTooLargeError):
            await sink.send(records)
        await SplittingSink(sink, 100).send(records)
        await sink.aclose()
        assert all(len(call) <= 4 for call in lunary.calls)
        assert len(lunary.runs) == 5

    async def test_an_unreachable_server_is_retryable(self, transformer: Transformer) -> None:
        sink = LunarySink("http://127.0.0.1:9", "k", timeout=2)
        with pytest.raises(SinkRetryableError):
            await sink.send([transformer(chat_event(0))])
        await sink.aclose()
