"""Encryption of upstream API keys at rest, in the predecessor's `enc:v1:` format.

`enc:v1:` + standard base64 of nonce (12 bytes) ‖ ciphertext ‖ GCM tag (16 bytes), AES-256-GCM,
no associated data. Values without the prefix are plaintext from before encryption was turned on
and pass through unchanged, so a database can be encrypted in place later.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llm_proxy.errors import StorageError

PREFIX = "enc:v1:"
NONCE_BYTES = 12
KEY_BYTES = 32


class KeyCipher:
    """Encrypts and decrypts stored API keys; without a key it is the identity."""

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"encryption key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key) if key is not None else None

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    @staticmethod
    def is_encrypted(value: str) -> bool:
        return value.startswith(PREFIX)

    def encrypt(self, plaintext: str) -> str:
        """Encrypt unless there is no key, the value is empty, or it is already encrypted."""
        if self._aead is None or not plaintext or self.is_encrypted(plaintext):
            return plaintext
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), None)
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, stored: str) -> str:
        if not self.is_encrypted(stored):
            return stored
        if self._aead is None:
            raise StorageError(
                "a stored API key is encrypted but ENCRYPTION_KEY is not set; "
                "start with the key it was encrypted with"
            )
        try:
            raw = base64.b64decode(stored[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise StorageError("a stored API key is corrupt: enc:v1 value is not base64") from None
        if len(raw) <= NONCE_BYTES:
            raise StorageError("a stored API key is corrupt: its enc:v1 value is too short")
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None).decode()
        except InvalidTag:
            raise StorageError(
                "cannot decrypt a stored API key: "
                "ENCRYPTION_KEY is not the key it was encrypted with"
            ) from None
