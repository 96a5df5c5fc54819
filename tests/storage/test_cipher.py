from __future__ import annotations

import base64

import pytest

from llm_proxy.errors import StorageError
from llm_proxy.storage.cipher import PREFIX, KeyCipher

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


class TestKeyCipher:
    def test_round_trip_uses_a_fresh_nonce_each_time(self) -> None:
        cipher = KeyCipher(KEY)

        first, second = cipher.encrypt("sk-secret"), cipher.encrypt("sk-secret")

        assert first.startswith(PREFIX)
        assert first != second
        assert cipher.decrypt(first) == cipher.decrypt(second) == "sk-secret"

    def test_layout_is_nonce_ciphertext_and_tag(self) -> None:
        sealed = base64.b64decode(KeyCipher(KEY).encrypt("abc")[len(PREFIX):])

        assert len(sealed) == 12 + 3 + 16

    def test_plaintext_and_empty_values_pass_through(self) -> None:
        cipher = KeyCipher(KEY)

        assert cipher.decrypt("sk-legacy-plaintext") == "sk-legacy-plaintext"
        assert cipher.encrypt("") == ""

    def test_already_encrypted_values_are_not_encrypted_twice(self) -> None:
        cipher = KeyCipher(KEY)
        sealed = cipher.encrypt("sk-secret")

        assert cipher.encrypt(sealed) == sealed

    def test_without_a_key_it_is_the_identity(self) -> None:
        cipher = KeyCipher(None)

        assert not cipher.enabled
        assert cipher.encrypt("sk-secret") == "sk-secret"

    def test_wrong_key_raises_a_clear_storage_error(self) -> None:
        sealed = KeyCipher(KEY).encrypt("sk-secret")

        with pytest.raises(StorageError, match="ENCRYPTION_KEY is not the key"):
            KeyCipher(OTHER_KEY).decrypt(sealed)

    def test_encrypted_value_without_a_key_raises(self) -> None:
        sealed = KeyCipher(KEY).encrypt("sk-secret")

        with pytest.raises(StorageError, match="ENCRYPTION_KEY is not set"):
            KeyCipher(None).decrypt(sealed)

    @pytest.mark.parametrize("stored", [PREFIX + "not base64!", PREFIX + "AAAA"])
    def test_corrupt_values_raise(self, stored: str) -> None:
        with pytest.raises(StorageError, match="corrupt"):
            KeyCipher(KEY).decrypt(stored)

    def test_key_must_be_32_bytes(self) -> None:
        with pytest.raises(ValueError, match="32 bytes"):
            KeyCipher(b"short")
