"""Token secrets: format, hashing and the display forms."""

from __future__ import annotations

from llm_proxy.tokens.format import (
    format_problem,
    generate_token,
    hash_token,
    looks_obfuscated,
    obfuscate_api_key,
    token_hint,
)


class TestTokenFormat:
    def test_generated_tokens_have_the_predecessor_format_and_are_unique(self) -> None:
        tokens = {generate_token() for _ in range(200)}
        assert len(tokens) == 200
        for token in tokens:
            assert len(token) == 25 and token.startswith("sk-")
            assert format_problem(token) is None

    def test_malformed_tokens_are_named(self) -> None:
        assert format_problem("sk-short") is not None
        assert format_problem("xx-" + "A" * 22) is not None
        assert format_problem("sk-" + "!" * 22) is not None

    def test_hash_is_sha256_hex(self) -> None:
        import hashlib

        assert hash_token("sk-abc") == hashlib.sha256(b"sk-abc").hexdigest()
        assert hash_token("sk-abc") == hash_token("sk-abc") != hash_token("sk-abd")

    def test_hint_hides_the_middle(self) -> None:
        token = "sk-ABCDefghijklmnopqrWXYZ0"[:25]
        hint = token_hint(token)
        assert hint.startswith("sk-ABCD") and hint.endswith(token[-4:])
        assert hint.count("*") == 14

    def test_api_key_obfuscation_rules(self) -> None:
        assert obfuscate_api_key("abcd") == "****"
        assert obfuscate_api_key("abcdefgh") == "ab******"
        assert obfuscate_api_key("sk-proj-1234567890abcd") == "sk-proj-...abcd"
        assert looks_obfuscated("sk-proj-...abcd") and looks_obfuscated("ab****cd")
        assert not looks_obfuscated("sk-proj-1234567890abcd")
