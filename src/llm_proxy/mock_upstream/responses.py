"""Canned, deterministic OpenAI response bodies (shapes of the `openai` SDK's types)."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

from llm_proxy.mock_upstream.textgen import Plan, RequestProblem, words_of

MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4.1-mini", "system"),
    ("gpt-4.1", "system"),
    ("gpt-4o", "system"),
    ("gpt-4o-mini", "system"),
    ("gpt-5", "system"),
    ("o3-mini", "system"),
    ("gpt-3.5-turbo-instruct", "system"),
    ("text-embedding-3-small", "system"),
    ("text-embedding-3-large", "system"),
    ("whisper-1", "openai-internal"),
    ("gpt-4o-transcribe", "system"),
)
MODEL_CREATED = 1_700_000_000
DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 8192


@dataclass(frozen=True, slots=True)
class Call:
    """What every payload of one request shares: a per-server sequence number, time, model."""

    seq: int
    created: int
    model: str

    def ident(self, prefix: str) -> str:
        return f"{prefix}mock{self.seq:010d}"


def chat_usage(plan: Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.total_tokens,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(call: Call, plan: Plan) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant", "content": plan.text, "refusal": None, "annotations": []
    }
    return {
        "id": call.ident("chatcmpl-"),
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
        ],
        "usage": chat_usage(plan),
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def completion_usage(plan: Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.total_tokens,
    }


def text_completion(call: Call, plan: Plan) -> dict[str, Any]:
    choice = {"text": plan.text, "index": 0, "logprobs": None, "finish_reason": plan.finish_reason}
    return {
        "id": call.ident("cmpl-"),
        "object": "text_completion",
        "created": call.created,
        "model": call.model,
        "choices": [choice],
        "usage": completion_usage(plan),
    }


def responses_usage(plan: Plan) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": plan.cached_tokens},
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": plan.total_tokens,
    }


def output_message(call: Call, plan: Plan, *, done: bool = True) -> dict[str, Any]:
    """The assistant message item; `done=False` is the empty copy a stream announces first."""
    status = "in_progress"
    if done:
        status = "incomplete" if plan.finish_reason == "length" else "completed"
    return {
        "id": call.ident("msg_"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text_part(plan.text)] if done else [],
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(
    call: Call, plan: Plan, body: dict[str, Any], *, final: bool = True
) -> dict[str, Any]:
    """A Responses API `response`; `final=False` is the in-progress copy streams start with."""
    incomplete = final and plan.finish_reason == "length"
    status = "incomplete" if incomplete else ("completed" if final else "in_progress")
    return {
        "id": call.ident("resp_"),
        "object": "response",
        "created_at": call.created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": call.model,
        "output": [output_message(call, plan)] if final else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": responses_usage(plan) if final else None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def model_object(model_id: str, owned_by: str = "system") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": owned_by}


def model_list() -> dict[str, Any]:
    return {"object": "list", "data": [model_object(mid, owner) for mid, owner in MODELS]}


def find_model(model_id: str) -> dict[str, Any] | None:
    for mid, owner in MODELS:
        if mid == model_id:
            return model_object(mid, owner)
    return None


def embedding_inputs(value: Any) -> list[Any]:
    """The list of inputs: a string, a token array, or a list of either."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            return [value]
        if all(isinstance(x, str | list) for x in value):
            return list(value)
    raise RequestProblem("'input' must be a string, a token array, or a non-empty list.", "input")


def embedding_dimensions(body: dict[str, Any], model: str) -> int:
    value = body.get("dimensions")
    if value is None:
        return 3072 if model.endswith("-large") else DEFAULT_DIMENSIONS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSIONS:
        message = f"'dimensions' must be an integer in 1..{MAX_DIMENSIONS}."
        raise RequestProblem(message, "dimensions")
    return value


def unit_vector(seed: bytes, dims: int) -> list[float]:
    """A deterministic unit-length vector derived from `seed`."""
    raw = struct.unpack(f"<{dims}H", hashlib.shake_256(seed).digest(dims * 2))
    values = [v / 32767.5 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embeddings(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    inputs = embedding_inputs(body.get("input"))
    dims = embedding_dimensions(body, call.model)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise RequestProblem("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    data: list[dict[str, Any]] = []
    for index, item in enumerate(inputs):
        vector = unit_vector(repr(item).encode(), dims)
        encoded: Any = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(words_of(item)) for item in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": call.model, "usage": usage}


def multipart_field(body: bytes, name: str) -> str | None:
    match = re.search(rb'name="' + re.escape(name.encode()) + rb'"\r\n\r\n([^\r\n]*)', body)
    return match.group(1).decode("utf-8", "replace") if match else None


def transcription(body: bytes) -> tuple[str, dict[str, Any] | None]:
    """(text, JSON body); the JSON body is None for the plain-text response formats."""
    model = multipart_field(body, "model") or "whisper-1"
    text = f"mock transcription of {len(body)} bytes"
    if multipart_field(body, "response_format") in ("text", "srt", "vtt"):
        return text, None
    usage: dict[str, Any]
    if model.startswith("whisper"):
        usage = {"type": "duration", "seconds": max(1, len(body) // 32000)}
    else:
        audio = max(1, len(body) // 1000)
        output = len(text.split())
        usage = {
            "type": "tokens",
            "input_tokens": audio,
            "output_tokens": output,
            "total_tokens": audio + output,
            "input_token_details": {"audio_tokens": audio, "text_tokens": 0},
        }
    return text, {"text": text, "usage": usage}
