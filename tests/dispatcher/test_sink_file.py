"""FileSink: one decodable JSON line per event, appended, fsync'd, rotated by size."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from llm_proxy.dispatcher.sinks import SinkRetryableError
from llm_proxy.dispatcher.sinks.file import FileSink
from llm_proxy.dispatcher.transform import Transformer
from llm_proxy.events import decode_event
from tests.dispatcher.conftest import chat_event, responses_event


def line_counts(directory: Path) -> dict[str, int]:
    return {p.name: len(p.read_bytes().splitlines()) for p in directory.iterdir()}


class TestFileSink:
    async def test_lines_are_the_enriched_event_plus_decoded_bodies(self, tmp_path: Path,
                                                                    transformer: Transformer) -> None:
        path = tmp_path / "out" / "events.jsonl"
        sink = FileSink(path)
        records = [transformer(chat_event(0, stream=True)), transformer(responses_event(1))]
        await sink.send(records)
        await sink.send(records[:1])
        await sink.aclose()
        lines = path.read_bytes().splitlines()
        assert len(lines) == 3
        first = orjson.loads(lines[0])
        assert first["api"] == "chat"
        assert first["response"]["object"] == "chat.completion"
        assert first["request"]["stream"] is True
        assert first["input_tokens"] == 7
        again = decode_event(lines[1])
        assert again == records[1].event
        assert again.cost_known

    async def test_rotation_keeps_the_configured_backups(self, tmp_path: Path, transformer: Transformer) -> None:
        path = tmp_path / "events.jsonl"
        record = transformer(chat_event(0))
        sink = FileSink(path, max_bytes=1, backups=2)
        for _ in range(4):
            await sink.send([record])
        await sink.aclose()
        assert line_counts(tmp_path) == {"events.jsonl": 1, "events.jsonl.1": 1, "events.jsonl.2": 1}

    async def test_an_unwritable_path_is_a_retryable_failure(self, tmp_path: Path,
                                                             transformer: Transformer) -> None:
        (tmp_path / "file").write_text("")
        sink = FileSink(tmp_path / "file" / "events.jsonl")
        with pytest.raises(SinkRetryableError, match="writing"):
            await sink.send([transformer(chat_event(0))])
