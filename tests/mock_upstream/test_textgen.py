from __future__ import annotations

import pytest

from llm_proxy.mock_upstream.textgen import (
    Extras,
    RequestProblem,
    last_user_words,
    plan_reply,
    reply_limit,
    words_of,
)


class TestWords:
    def test_counts_words_of_strings_parts_and_token_arrays(self):
        """Content parts contribute their `text`; token arrays count one per integer."""
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "image_url"}]},
        ]
        assert words_of(messages) == ["be", "brief", "one", "two"]
        assert words_of([1, 2, 3]) == ["1", "2", "3"]
        assert words_of(None) == []

    def test_source_is_the_last_user_message(self):
        messages = [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "second"},
        ]
        assert last_user_words(messages) == ["second"]
        assert last_user_words("plain input text") == ["plain", "input", "text"]


class TestPlan:
    def test_echoes_the_source_without_a_limit(self):
        plan = plan_reply(5, ["a", "b", "c"], None, Extras())
        assert (plan.text, plan.finish_reason, plan.completion_tokens, plan.total_tokens) == (
            "a b c", "stop", 3, 8,
        )

    def test_limit_cycles_the_source_or_cuts_it(self):
        longer = plan_reply(1, ["a", "b"], 5, Extras())
        shorter = plan_reply(1, ["a", "b", "c"], 2, Extras())
        assert (longer.text, longer.finish_reason) == ("a b a b a", "stop")
        assert (shorter.text, shorter.finish_reason) == ("a b", "length")

    def test_empty_source_replies_ok_and_extras_are_capped(self):
        plan = plan_reply(2, [], None, Extras(cached_tokens=9, reasoning_tokens=4))
        assert plan.text == "ok"
        assert plan.cached_tokens == 2
        assert plan.completion_tokens == 5

    @pytest.mark.parametrize("count", [1, 3, 7, 12])
    def test_pieces_rejoin_to_the_text(self, count):
        plan = plan_reply(0, ["the", "quick", "brown", "fox", "jumps", "over"], None, Extras())
        pieces = plan.pieces(count)
        assert len(pieces) == count
        assert "".join(pieces) == plan.text

    def test_limit_must_be_a_positive_integer(self):
        with pytest.raises(RequestProblem) as info:
            reply_limit({"max_tokens": 0}, "max_tokens")
        assert info.value.param == "max_tokens"
        assert reply_limit({"max_completion_tokens": 3, "max_tokens": 9},
                           "max_completion_tokens", "max_tokens") == 3
