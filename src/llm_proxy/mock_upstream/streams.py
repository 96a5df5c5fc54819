"""Streamed replies as lists of ready SSE frames (the server paces and may cut them).

Chat and legacy completions: one frame per content piece (`chunks` of them; the chat stream
opens with a role-only frame), a frame with an empty delta and the `finish_reason`, the usage
frame (`choices: []`) when `stream_options.include_usage` is true, then `data: [DONE]`.
Responses: created, in_progress, output_item.added, content_part.added, one
output_text.delta per piece, output_text.done, content_part.done, output_item.done and
completed (or incomplete when `max_output_tokens` cut the reply); no `[DONE]`.
"""

from __future__ import annotations

from typing import Any

from llm_proxy.mock_upstream import responses
from llm_proxy.mock_upstream.responses import Call
from llm_proxy.mock_upstream.sse import DONE, data_frame, event_frame
from llm_proxy.mock_upstream.textgen import Plan


def _chat_chunk(
    call: Call, delta: dict[str, Any], finish: str | None, include_usage: bool
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": call.ident("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": call.created,
        "model": call.model,
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def chat_stream(call: Call, plan: Plan, chunks: int, include_usage: bool) -> list[bytes]:
    opening = {"role": "assistant", "content": "", "refusal": None}
    frames = [data_frame(_chat_chunk(call, opening, None, include_usage))]
    frames.extend(
        data_frame(_chat_chunk(call, {"content": piece}, None, include_usage))
        for piece in plan.pieces(chunks)
    )
    frames.append(data_frame(_chat_chunk(call, {}, plan.finish_reason, include_usage)))
    if include_usage:
        final = _chat_chunk(call, {}, None, include_usage)
        final["choices"] = []
        final["usage"] = responses.chat_usage(plan)
        frames.append(data_frame(final))
    frames.append(DONE)
    return frames


def _completion_chunk(call: Call, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": call.ident("cmpl-"),
        "object": "text_completion",
        "created": call.created,
        "model": call.model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }


def completion_stream(call: Call, plan: Plan, chunks: int, include_usage: bool) -> list[bytes]:
    frames = [data_frame(_completion_chunk(call, piece, None)) for piece in plan.pieces(chunks)]
    frames.append(data_frame(_completion_chunk(call, "", plan.finish_reason)))
    if include_usage:
        final = _completion_chunk(call, "", None)
        final["choices"] = []
        final["usage"] = responses.completion_usage(plan)
        frames.append(data_frame(final))
    frames.append(DONE)
    return frames


def response_stream(call: Call, plan: Plan, chunks: int, body: dict[str, Any]) -> list[bytes]:
    started = responses.response_object(call, plan, body, final=False)
    finished = responses.response_object(call, plan, body)
    item_id = call.ident("msg_")
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    empty_part = responses.output_text_part("")
    full_part = responses.output_text_part(plan.text)
    terminal = "response.completed" if finished["status"] == "completed" else "response.incomplete"
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": responses.output_message(call, plan, done=False),
        },
        {"type": "response.content_part.added", **where, "part": empty_part},
    ]
    events.extend(
        {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        for piece in plan.pieces(chunks)
    )
    events += [
        {"type": "response.output_text.done", **where, "text": plan.text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": full_part},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": responses.output_message(call, plan),
        },
        {"type": terminal, "response": finished},
    ]
    return [event_frame({**event, "sequence_number": n}) for n, event in enumerate(events)]
