"""How the mock turns a request into reply text and token counts.

The rules, so that tests elsewhere can predict every number:

- A token is a whitespace-separated word (`str.split()`); in a token array each integer counts
  as one.
- Prompt tokens are the words of every text the request carries: chat `messages[*].content`
  (a string, or the `text` of each content part), the legacy `prompt`, the Responses
  `instructions` plus `input`, each embeddings input.
- The reply echoes the words of the last user message (legacy completions: the whole prompt).
  When there are none it is the single word `ok`.
- With `max_tokens` (`max_completion_tokens`, `max_output_tokens`) the reply has exactly that many
  words, the source repeated as needed; without it, as many words as the source.
  `finish_reason` is `length` when the reply is shorter than the source, else `stop`.
- `completion_tokens` = reply words + reasoning tokens; `total_tokens` = prompt + completion.
  Cached and reasoning tokens are 0 unless the request sends `X-Mock-Cached-Tokens` /
  `X-Mock-Reasoning-Tokens` (cached is capped at the prompt tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any

MAX_REPLY_WORDS = 200_000
FALLBACK_WORDS = ("ok",)


class RequestProblem(ValueError):
    """A request field the real API would reject with 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def words_of(value: Any) -> list[str]:
    """Words of a string, a token array, content parts or a list of messages."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [word for item in value for word in words_of(item)]
    if isinstance(value, dict):
        text = value.get("text")
        return text.split() if isinstance(text, str) else words_of(value.get("content"))
    return []


def last_user_words(messages: Any) -> list[str]:
    """Words of the last `role: user` item of a message list (all words if there is none)."""
    if not isinstance(messages, list):
        return words_of(messages)
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return words_of(message.get("content"))
    return words_of(messages)


@dataclass(frozen=True, slots=True)
class Extras:
    """Token counts the request asked for through test headers."""

    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    prompt_tokens: int
    words: tuple[str, ...]
    finish_reason: str
    cached_tokens: int
    reasoning_tokens: int

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def completion_tokens(self) -> int:
        return len(self.words) + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def pieces(self, count: int) -> list[str]:
        """The reply split at word boundaries into exactly `count` strings that join to `text`."""
        spaced = [word if i == 0 else " " + word for i, word in enumerate(self.words)]
        n = len(spaced)
        return ["".join(spaced[k * n // count : (k + 1) * n // count]) for k in range(count)]


def reply_limit(body: dict[str, Any], *names: str) -> int | None:
    """The first of `names` present in `body`, checked like the real API (positive integer)."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestProblem(f"Invalid '{name}': expected an integer >= 1.", name)
        return min(value, MAX_REPLY_WORDS)
    return None


def plan_reply(prompt_tokens: int, source: list[str], limit: int | None, extras: Extras) -> Plan:
    base = tuple(source) or FALLBACK_WORDS
    size = len(base) if limit is None else limit
    words = tuple(islice(cycle(base), size))
    return Plan(
        prompt_tokens=prompt_tokens,
        words=words,
        finish_reason="length" if size < len(base) else "stop",
        cached_tokens=min(extras.cached_tokens, prompt_tokens),
        reasoning_tokens=extras.reasoning_tokens,
    )
