"""Streamed OpenAI responses (server-sent events) merged into the object a plain call returns.

The shape is recognised from the frames themselves, with the request path only as a hint:
chat completion chunks, legacy completion chunks, Responses-API events (`response.*`),
assistants run events (`thread.*`) and transcription events (`transcript.text.*`). A stream cut
short (capture cap, client gone) still merges: what arrived is kept and the usage is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

Frame = tuple[str | None, dict[str, Any]]
TERMINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def sse_frames(text: str) -> list[Frame]:
    """(event name, JSON data) of each event; `[DONE]`, comments and bad JSON are skipped."""
    frames: list[Frame] = []
    name: str | None = None
    data: list[str] = []
    for line in [*text.splitlines(), ""]:
        if not line:
            if data:
                _append(frames, name, "\n".join(data))
            name, data = None, []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            name = line[6:].strip()
    return frames


def _append(frames: list[Frame], name: str | None, data: str) -> None:
    if data.strip() == "[DONE]":
        return
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(value, dict):
        frames.append((name, value))


def stream_kind(frames: list[Frame], hint: str) -> str:
    for name, data in frames:
        kind = data.get("object")
        kind_type = data.get("type")
        if kind == "chat.completion.chunk":
            return "chat"
        if kind == "text_completion":
            return "completions"
        if isinstance(kind_type, str) and kind_type.startswith("response."):
            return "responses"
        if isinstance(kind_type, str) and kind_type.startswith("transcript."):
            return "transcriptions"
        if name and name.startswith("thread."):
            return "threads"
    return hint


def merge_stream(text: str, hint: str = "") -> Any:
    """The merged object; for an unknown shape, the list of event data."""
    frames = sse_frames(text)
    merger = MERGERS.get(stream_kind(frames, hint))
    if merger is None:
        return [data for _, data in frames]
    return merger(frames)


def _header(merged: dict[str, Any], chunk: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in merged and chunk.get(key) is not None:
            merged[key] = chunk[key]


def merge_chat(frames: list[Frame]) -> dict[str, Any]:
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage = error = None
    for _, chunk in frames:
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            continue
        _header(head, chunk, ("id", "created", "model", "service_tier", "system_fingerprint"))
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            state = choices.setdefault(choice.get("index", 0), {"content": [], "refusal": [], "tools": {}})
            _chat_delta(state, choice)
    merged = {"id": head.pop("id", None), "object": "chat.completion", **head,
              "choices": [_chat_choice(i, s) for i, s in sorted(choices.items())]}
    return _finish(merged, usage, error)


def _chat_delta(state: dict[str, Any], choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    if delta.get("role"):
        state["role"] = delta["role"]
    for key in ("content", "refusal"):
        if isinstance(delta.get(key), str):
            state[key].append(delta[key])
    for call in delta.get("tool_calls") or ():
        slot = state["tools"].setdefault(call.get("index", 0), {
            "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        slot["id"] = call.get("id") or slot["id"]
        slot["type"] = call.get("type") or slot["type"]
        function = call.get("function") or {}
        slot["function"]["name"] += function.get("name") or ""
        slot["function"]["arguments"] += function.get("arguments") or ""
    if choice.get("finish_reason"):
        state["finish_reason"] = choice["finish_reason"]


def _chat_choice(index: int, state: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": state.get("role", "assistant"),
                               "content": "".join(state["content"]) if state["content"] or not state["tools"]
                               else None}
    if state["refusal"]:
        message["refusal"] = "".join(state["refusal"])
    if state["tools"]:
        message["tool_calls"] = [state["tools"][k] for k in sorted(state["tools"])]
    return {"index": index, "message": message, "finish_reason": state.get("finish_reason")}


def merge_completions(frames: list[Frame]) -> dict[str, Any]:
    head: dict[str, Any] = {}
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    usage = error = None
    for _, chunk in frames:
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            continue
        _header(head, chunk, ("id", "created", "model", "system_fingerprint"))
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            texts.setdefault(index, []).append(choice.get("text") or "")
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
    choices = [{"index": i, "text": "".join(parts), "finish_reason": finish.get(i)}
               for i, parts in sorted(texts.items())]
    merged = {"id": head.pop("id", None), "object": "text_completion", **head, "choices": choices}
    return _finish(merged, usage, error)


def _finish(merged: dict[str, Any], usage: Any, error: Any) -> dict[str, Any]:
    if usage:
        merged["usage"] = usage
    if error:
        merged["error"] = error
    return merged


def merge_responses(frames: list[Frame]) -> dict[str, Any]:
    """The terminal event's `response`; rebuilt from the items and deltas if the stream was cut."""
    final = base = error = None
    items: dict[int, Any] = {}
    texts: dict[int, list[str]] = {}
    for name, event in frames:
        kind = event.get("type") or name
        if kind in TERMINAL_RESPONSE_EVENTS and isinstance(event.get("response"), dict):
            final = event["response"]
        elif kind in ("response.created", "response.queued", "response.in_progress"):
            base = event.get("response") if isinstance(event.get("response"), dict) else base
        elif kind == "response.output_item.done":
            items[event.get("output_index", 0)] = event.get("item")
        elif kind == "response.output_text.delta":
            texts.setdefault(event.get("output_index", 0), []).append(event.get("delta") or "")
        elif kind == "error":
            error = {key: event.get(key) for key in ("code", "message", "param")}
    if final is not None:
        return final if error is None or final.get("error") else {**final, "error": error}
    merged = {**(base or {"object": "response"}), "status": "failed" if error else "incomplete"}
    for index, parts in texts.items():
        items.setdefault(index, {"type": "message", "role": "assistant",
                                 "content": [{"type": "output_text", "text": "".join(parts)}]})
    merged["output"] = [items[i] for i in sorted(items)]
    if error:
        merged["error"] = error
    return merged


def merge_thread_run(frames: list[Frame]) -> dict[str, Any]:
    run: dict[str, Any] = {"object": "thread.run"}
    deltas: list[str] = []
    completed: list[str] | None = None
    for name, event in frames:
        if name and name.startswith("thread.run.") and not name.startswith("thread.run.step"):
            run.update({k: event[k] for k in ("id", "assistant_id", "thread_id", "status", "created_at",
                                               "model", "usage") if event.get(k) is not None})
        elif name == "thread.message.delta":
            deltas += _thread_texts((event.get("delta") or {}).get("content"))
        elif name == "thread.message.completed":
            completed = (completed or []) + _thread_texts(event.get("content"))
    text = "".join(completed if completed is not None else deltas)
    run["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": run.get("status")}]
    return run


def _thread_texts(parts: Any) -> list[str]:
    texts = []
    for part in parts or ():
        if isinstance(part, dict) and part.get("type") == "text":
            value = (part.get("text") or {}).get("value")
            if isinstance(value, str):
                texts.append(value)
    return texts


def merge_transcription(frames: list[Frame]) -> dict[str, Any]:
    deltas: list[str] = []
    for name, event in frames:
        kind = event.get("type") or name
        if kind == "transcript.text.done":
            return {key: event[key] for key in ("text", "usage", "logprobs") if key in event}
        if kind == "transcript.text.delta":
            deltas.append(event.get("delta") or "")
    return {"text": "".join(deltas)}


MERGERS: dict[str, Callable[[list[Frame]], Any]] = {
    "chat": merge_chat,
    "completions": merge_completions,
    "responses": merge_responses,
    "threads": merge_thread_run,
    "transcriptions": merge_transcription,
}
