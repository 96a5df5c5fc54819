"""Streams merge into the object the non-streamed call returns, usage included."""

from __future__ import annotations

import orjson

from llm_proxy.dispatcher.sse_merge import merge_stream, sse_frames
from llm_proxy.mock_upstream import responses, streams
from tests.dispatcher.conftest import CALL, plan


def sse(*frames: dict[str, object], done: bool = True) -> str:
    text = "".join(f"data: {orjson.dumps(frame).decode()}\n\n" for frame in frames)
    return text + ("data: [DONE]\n\n" if done else "")


def chunk(delta: dict[str, object], finish: str | None = None, index: int = 0) -> dict[str, object]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


class TestChat:
    def test_mock_upstream_stream_merges_to_the_plain_completion(self) -> None:
        p = plan(words=7, prompt_tokens=11, cached=3, reasoning=2)
        text = b"".join(streams.chat_stream(CALL, p, 4, True)).decode()
        merged = merge_stream(text, "chat")
        plain = responses.chat_completion(CALL, p)
        assert merged["object"] == "chat.completion"
        assert merged["id"] == plain["id"]
        assert merged["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
        assert merged["choices"][0]["finish_reason"] == "stop"
        assert merged["usage"] == plain["usage"]

    def test_tool_call_fragments_are_joined_per_index(self) -> None:
        text = sse(
            chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                        "function": {"name": "get_", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({}, "tool_calls"),
        )
        message = merge_stream(text, "chat")["choices"][0]["message"]
        assert message["content"] is None
        assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                          "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]

    def test_several_choices_and_an_error_frame(self) -> None:
        text = sse(chunk({"content": "a"}, index=0), chunk({"content": "b"}, index=1),
                   {"error": {"message": "upstream broke", "type": "server_error"}}, done=False)
        merged = merge_stream(text, "")
        assert [c["message"]["content"] for c in merged["choices"]] == ["a", "b"]
        assert merged["error"]["message"] == "upstream broke"
        assert "usage" not in merged

    def test_crlf_framing_and_comments(self) -> None:
        text = ": keep-alive\r\n\r\n" + sse(chunk({"content": "x"})).replace("\n", "\r\n")
        assert merge_stream(text, "chat")["choices"][0]["message"]["content"] == "x"


class TestCompletions:
    def test_legacy_completion_stream(self) -> None:
        p = plan(words=4, prompt_tokens=2)
        merged = merge_stream(b"".join(streams.completion_stream(CALL, p, 2, True)).decode(), "completions")
        assert merged["object"] == "text_completion"
        assert merged["choices"][0]["text"] == p.text
        assert merged["usage"]["completion_tokens"] == 4


class TestResponses:
    def test_completed_stream_is_the_terminal_response(self) -> None:
        p = plan(words=6, prompt_tokens=9, cached=4, reasoning=1)
        body = {"model": "gpt-4o-mini", "input": "x"}
        merged = merge_stream(b"".join(streams.response_stream(CALL, p, 3, body)).decode(), "responses")
        assert merged == responses.response_object(CALL, p, body)
        assert merged["usage"]["input_tokens_details"]["cached_tokens"] == 4

    def test_a_cut_stream_is_rebuilt_from_deltas_without_usage(self) -> None:
        p = plan(words=6)
        frames = streams.response_stream(CALL, p, 3, {"model": "m"})
        text = b"".join(frames[:6]).decode()  # created, in_progress, item added, part added, 2 deltas
        merged = merge_stream(text, "")
        assert merged["status"] == "incomplete"
        assert merged.get("usage") is None
        assert merged["output"][0]["content"][0]["text"] == "".join(p.pieces(3)[:2])

    def test_error_event(self) -> None:
        text = ('event: response.created\ndata: {"type":"response.created","response":{"id":"r1"}}\n\n'
                'event: error\ndata: {"type":"error","code":"server_error","message":"boom","param":null}\n\n')
        merged = merge_stream(text, "responses")
        assert merged["status"] == "failed"
        assert merged["error"]["message"] == "boom"
        assert merged["id"] == "r1"


def test_assistants_run_stream() -> None:
    text = (
        'event: thread.run.created\ndata: {"id":"run_1","assistant_id":"asst_1","thread_id":"th_1",'
        '"status":"queued","created_at":5}\n\n'
        'event: thread.message.delta\ndata: {"delta":{"content":[{"type":"text","text":{"value":"Hel"}}]}}\n\n'
        'event: thread.message.delta\ndata: {"delta":{"content":[{"type":"text","text":{"value":"lo"}}]}}\n\n'
        'event: thread.run.completed\ndata: {"id":"run_1","status":"completed",'
        '"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n'
        "event: done\ndata: [DONE]\n\n"
    )
    merged = merge_stream(text, "threads")
    assert merged["object"] == "thread.run"
    assert merged["status"] == "completed"
    assert merged["choices"][0]["message"]["content"] == "Hello"
    assert merged["usage"]["total_tokens"] == 7


def test_transcription_stream() -> None:
    text = ('data: {"type":"transcript.text.delta","delta":"hel"}\n\n'
            'data: {"type":"transcript.text.done","text":"hello","usage":{"type":"tokens","input_tokens":3,'
            '"output_tokens":1,"total_tokens":4}}\n\n')
    assert merge_stream(text, "transcriptions") == {
        "text": "hello", "usage": {"type": "tokens", "input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}


def test_unknown_streams_keep_their_events_and_bad_frames_are_skipped() -> None:
    text = 'data: {"a": 1}\n\ndata: {broken\n\ndata: [DONE]\n\n'
    assert sse_frames(text) == [(None, {"a": 1})]
    assert merge_stream(text, "other") == [{"a": 1}]
