"""Offline token counting with the shipped vocabularies: tiktoken's exact ids, no network."""

from __future__ import annotations

import pytest

from llm_proxy.dispatcher import tokens
from llm_proxy.dispatcher.tokens import TokenCounter, VocabularyError, encoding_name, load_encoding


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


class TestTokenCounter:
    def test_known_token_ids_of_the_openai_cookbook(self, counter: TokenCounter) -> None:
        assert counter.encoding("gpt-4").encode("hello world") == [15339, 1917]
        assert counter.encoding("gpt-4o").encode("hello world") == [24912, 2375]
        assert counter.encoding("gpt-4").encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
        assert counter.encoding("gpt-4").encode("antidisestablishmentarianism") == [519, 85342, 34500, 479, 8997, 2191]

    def test_counts_of_the_cookbook(self, counter: TokenCounter) -> None:
        assert counter.count("2 + 2 = 4", "gpt-4") == 7
        assert counter.count("お誕生日おめでとう", "gpt-4") == 9
        assert counter.count("お誕生日おめでとう", "gpt-4o") == 8

    def test_special_token_text_is_counted_as_text(self, counter: TokenCounter) -> None:
        assert counter.count("<|endoftext|>", "gpt-4o") > 1

    def test_chat_messages_follow_the_cookbook_rule(self, counter: TokenCounter) -> None:
        messages = [{"role": "system", "content": "hello world"}, {"role": "user", "name": "bob", "content": "hi"}]
        expected = 3 + (3 + 1 + 2) + (3 + 1 + 1 + 1 + 1)
        assert counter.count_messages(messages, "gpt-4o") == expected

    def test_content_parts_are_counted_by_their_text(self, counter: TokenCounter) -> None:
        parts = [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}]
        assert counter.count_messages(parts, "gpt-4o") == 3 + 3 + 1 + 2


@pytest.mark.parametrize(("model", "name"), [
    ("gpt-4o", "o200k_base"), ("gpt-4.1-mini", "o200k_base"), ("gpt-5", "o200k_base"), ("o3-mini", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"), ("text-embedding-3-small", "cl100k_base"),
    ("gpt-oss-120b", "o200k_base"), ("some-new-model", "o200k_base"), (None, "o200k_base"),
    ("openai/gpt-4", "cl100k_base"),
])
def test_encoding_choice(model: str | None, name: str) -> None:
    assert encoding_name(model) == name


def test_a_vocabulary_with_the_wrong_hash_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _, pattern, specials = tokens._VOCABS["cl100k_base"]
    monkeypatch.setitem(tokens._VOCABS, "cl100k_base", ("0" * 64, pattern, specials))
    with pytest.raises(VocabularyError, match="SHA-256"):
        load_encoding("cl100k_base")
