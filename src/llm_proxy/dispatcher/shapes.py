"""Where the text lives in each OpenAI API shape: the prompt of a request, the reply of a response."""

from __future__ import annotations

from typing import Any

API_KINDS = ("chat", "completions", "responses", "embeddings", "transcriptions", "translations",
             "speech", "images", "moderations", "threads", "models", "other")
"""What `api_kind` returns. The first five carry token usage."""

LLM_KINDS = frozenset({"chat", "completions", "responses", "threads"})
"""Calls that produce text from a prompt (Lunary `llm` runs, Helicone's OpenAI route)."""

_SUFFIXES = (
    ("/chat/completions", "chat"), ("/completions", "completions"), ("/responses", "responses"),
    ("/embeddings", "embeddings"), ("/audio/transcriptions", "transcriptions"),
    ("/audio/translations", "translations"), ("/audio/speech", "speech"), ("/moderations", "moderations"),
    ("/models", "models"),
)


def api_kind(path: str) -> str:
    bare = path.rstrip("/")
    if "/threads" in bare and "/runs" in bare:
        return "threads"
    if "/images/" in bare:
        return "images"
    for suffix, kind in _SUFFIXES:
        if bare.endswith(suffix):
            return kind
    if "/responses/" in bare:
        return "responses"
    if "/models/" in bare:
        return "models"
    return "other"


def _texts(value: Any) -> list[str]:
    """Every text of a content value: a string, content parts, or input items."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        for key in ("text", "content", "input_text", "arguments", "output"):
            if key in value:
                return _texts(value[key])
    return []


def prompt_text(api: str, request: Any) -> str:
    """The prompt text of a non-chat request (chat messages are counted per message)."""
    if not isinstance(request, dict):
        return ""
    if api == "completions":
        return "".join(_texts(request.get("prompt")))
    if api == "responses":
        return "".join(_texts(request.get("instructions")) + _texts(request.get("input")))
    if api == "embeddings":
        return "".join(_texts(request.get("input")))
    return ""


def output_text(api: str, response: Any) -> str:
    """The generated text (tool-call arguments included) of a response object."""
    if not isinstance(response, dict):
        return response if isinstance(response, str) and api in ("transcriptions", "translations") else ""
    if api in ("chat", "threads"):
        parts = []
        for choice in response.get("choices") or ():
            message = choice.get("message") or {}
            parts += _texts(message.get("content"))
            parts += [(c.get("function") or {}).get("arguments") or "" for c in message.get("tool_calls") or ()]
        return "".join(parts)
    if api == "completions":
        return "".join(choice.get("text") or "" for choice in response.get("choices") or ())
    if api == "responses":
        return "".join(text for item in response.get("output") or () for text in _texts(item))
    if api in ("transcriptions", "translations"):
        return "".join(_texts(response.get("text")))
    return ""


def output_message(api: str, response: Any) -> Any:
    """What the call answered, as an assistant message where the shape has one."""
    if not isinstance(response, dict):
        return response
    if api in ("chat", "threads"):
        messages = [choice.get("message") for choice in response.get("choices") or ()]
        return messages[0] if len(messages) == 1 else messages
    if api in ("completions", "responses"):
        return {"role": "assistant", "content": output_text(api, response)}
    if api == "embeddings":
        return {"embeddings": len(response.get("data") or ())}
    return response.get("text", response) if api in ("transcriptions", "translations") else response


def input_of(api: str, request: Any) -> Any:
    """The prompt as Lunary shows it: chat messages, the completion prompt, the Responses input."""
    if not isinstance(request, dict):
        return request
    if api == "responses":
        return _responses_input(request)
    key = {"chat": "messages", "completions": "prompt", "embeddings": "input"}.get(api)
    return request.get(key) if key else request


def _responses_input(request: dict[str, Any]) -> Any:
    items = request.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        return [{"role": "system", "content": instructions}, *(items or [])]
    return items


PROMPT_KEYS = frozenset({"messages", "prompt", "input", "instructions", "model", "stream", "stream_options",
                         "file"})


def params_of(request: Any) -> dict[str, Any]:
    """Request parameters other than the prompt and the model (temperature, max_tokens, tools...)."""
    if not isinstance(request, dict):
        return {}
    return {key: value for key, value in request.items() if key not in PROMPT_KEYS}
