"""CloudWatchSink: PutLogEvents limits (unit-tested: moto does not enforce them) and moto end to end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from llm_proxy.dispatcher.sinks import SinkPartialError, SinkRejectedError, SinkRetryableError
from llm_proxy.dispatcher.sinks.cloudwatch import (
    EVENT_OVERHEAD,
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    CloudWatchSink,
    message,
    rejected_events,
    split_batches,
)
from llm_proxy.dispatcher.transform import Transformer
from tests.dispatcher.conftest import chat_event, make_event
from tests.fakes.moto import MotoServer

HOUR_MS = 3600 * 1000


class TestBatchRules:
    def test_at_most_ten_thousand_events_per_call(self) -> None:
        entries = [(i, i, "x") for i in range(20_001)]
        assert [len(b) for b in split_batches(entries)] == [10_000, 10_000, 1]

    def test_bytes_count_utf8_plus_26_per_event(self) -> None:
        text = "é" * 1000  # 2000 UTF-8 bytes
        per_event = 2000 + EVENT_OVERHEAD
        entries = [(0, i, text) for i in range(1000)]
        batches = split_batches(entries)
        assert len(batches[0]) == MAX_BATCH_BYTES // per_event
        assert all(sum(len(m.encode()) + EVENT_OVERHEAD for _, _, m in b) <= MAX_BATCH_BYTES for b in batches)

    def test_a_call_spans_less_than_24_hours(self) -> None:
        entries = [(0, 0, "a"), (23 * HOUR_MS, 1, "b"), (24 * HOUR_MS, 2, "c"), (30 * HOUR_MS, 3, "d")]
        assert [[i for _, i, _ in b] for b in split_batches(entries)] == [[0, 1], [2, 3]]

    def test_rejected_event_ranges_map_to_records(self) -> None:
        batch = [(0, 7, "a"), (1, 3, "b"), (2, 5, "c"), (3, 1, "d")]
        failures = rejected_events(batch, {"tooOldLogEventEndIndex": 0, "tooNewLogEventStartIndex": 3})
        assert sorted(failures) == [1, 7]
        assert all(isinstance(e, SinkRejectedError) for e in failures.values())

    def test_messages_are_capped_and_say_so(self, transformer: Transformer) -> None:
        huge = chat_event(0, request_body=orjson.dumps({"model": "m", "messages": [
            {"role": "user", "content": "word " * 80_000}]}))
        text = message(transformer(huge))
        document = orjson.loads(text)
        assert len(text.encode()) <= MAX_MESSAGE_BYTES
        assert document["truncated"] is True
        assert "request_body" not in document
        assert document["event_id"] == huge.event_id


@pytest.fixture
def group() -> str:
    return f"/llm-proxy/test-{uuid.uuid4().hex[:8]}"


def read_back(aws: MotoServer, group: str, stream: str) -> list[dict[str, Any]]:
    client: Any = aws.client()
    events = client.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"]
    return [orjson.loads(e["message"]) for e in events]


class TestAgainstMoto:
    async def test_creates_group_and_stream_and_delivers_sorted_json(self, aws: MotoServer, group: str,
                                                                     transformer: Transformer) -> None:
        sink = CloudWatchSink(group, "proxy-1", endpoint=aws.url)
        records = [transformer(chat_event(i)) for i in (2, 0, 1)]
        records[0] = transformer(chat_event(2, request_headers={"content-type": "application/json",
                                                                "authorization": "Bearer sk-secret"}))
        await sink.send(records)
        await sink.aclose()
        messages = read_back(aws, group, "proxy-1")
        assert [m["request_id"] for m in messages] == ["req-0", "req-1", "req-2"]
        assert messages[0]["input_tokens"] == 7
        assert messages[0]["response"]["object"] == "chat.completion"
        assert all("sk-secret" not in orjson.dumps(m).decode() for m in messages)

    async def test_a_deleted_stream_is_recreated(self, aws: MotoServer, group: str,
                                                 transformer: Transformer) -> None:
        sink = CloudWatchSink(group, "proxy-1", endpoint=aws.url)
        await sink.send([transformer(chat_event(0))])
        client: Any = aws.client()
        client.delete_log_group(logGroupName=group)
        await sink.send([transformer(chat_event(1))])
        await sink.aclose()
        assert [m["request_id"] for m in read_back(aws, group, "proxy-1")] == ["req-1"]

    async def test_too_old_events_are_rejected_one_by_one(self, aws: MotoServer, group: str,
                                                          transformer: Transformer) -> None:
        now = datetime.now(UTC)
        old = make_event(0, started_at=now - timedelta(days=15), ended_at=now - timedelta(days=15))
        fresh = make_event(1, started_at=now, ended_at=now)
        sink = CloudWatchSink(group, "s", endpoint=aws.url)
        with pytest.raises(SinkPartialError) as caught:
            await sink.send([transformer(fresh), transformer(old)])
        await sink.aclose()
        assert list(caught.value.failures) == [1]
        assert "older than 14 days" in str(caught.value.failures[1])
        assert [m["request_id"] for m in read_back(aws, group, "s")] == ["req-1"]

    async def test_an_unreachable_endpoint_is_retryable(self, aws: MotoServer, transformer: Transformer) -> None:
        sink = CloudWatchSink("/g", "s", endpoint="http://127.0.0.1:9", timeout=1)
        with pytest.raises(SinkPartialError) as caught:
            await sink.send([transformer(chat_event(0))])
        await sink.aclose()
        assert isinstance(caught.value.failures[0], SinkRetryableError)
