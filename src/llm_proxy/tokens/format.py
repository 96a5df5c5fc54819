"""Token secrets: generation, hashing, display forms.

A secret is `sk-` + base64url (no padding) of 16 random bytes: 25 characters, the predecessor's
format, so its clients keep working. Only the SHA-256 hex of the secret is stored; the
obfuscated hint is stored beside it so listings can show which token is which.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "sk-"  # noqa: S105 - a prefix, not a secret
TOKEN_LENGTH = 25


def generate_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


def format_problem(token: str) -> str | None:
    """Why `token` cannot be one of ours, or None when the format is right."""
    if len(token) != TOKEN_LENGTH or not token.startswith(TOKEN_PREFIX):
        return f"expected {TOKEN_LENGTH} characters starting with {TOKEN_PREFIX!r}"
    body = token[len(TOKEN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "==")
    except (binascii.Error, ValueError):
        return "not base64url"
    if len(raw) != 16 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != body:
        return "not base64url of 16 bytes"
    return None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_hint(token: str) -> str:
    """`sk-` + first 4 + `*` for the middle + last 4 (the predecessor's listing form)."""
    body = token[len(TOKEN_PREFIX):] if token.startswith(TOKEN_PREFIX) else token
    if len(body) <= 8:
        return TOKEN_PREFIX + "*" * len(body)
    return TOKEN_PREFIX + body[:4] + "*" * (len(body) - 8) + body[-4:]


def obfuscate_api_key(key: str) -> str:
    """≤4 chars: all `*`; 5–12: first 2 + `*`; longer: first 8 + `...` + last 4."""
    if len(key) <= 4:
        return "*" * len(key)
    if len(key) <= 12:
        return key[:2] + "*" * (len(key) - 2)
    return key[:8] + "..." + key[-4:]


def obfuscate_id(value: str) -> str:
    """Generic rule for ids in audit details: first 8 + `...` + last 4."""
    return obfuscate_api_key(value)


def looks_obfuscated(key: str) -> bool:
    return "..." in key or "****" in key


def constant_time_equals(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
