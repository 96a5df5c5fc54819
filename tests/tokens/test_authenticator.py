"""Authenticator on real SQLite storage: cache, immediate revocation, quota, 503 on DB failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llm_proxy.clock import SystemClock
from llm_proxy.errors import ProxyError, StorageError
from llm_proxy.settings import load_settings
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import SqlStorage, open_storage
from llm_proxy.tokens.authenticator import Authenticator
from llm_proxy.tokens.format import generate_token, hash_token, token_hint


class RecordingUsage:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.hits: list[str] = []

    def record_request(self, token_id: str, at: datetime) -> None:
        self.requests.append(token_id)

    def record_cache_hit(self, token_id: str, at: datetime) -> None:
        self.hits.append(token_id)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqlStorage]:
    settings = load_settings({"DATABASE_PATH": str(tmp_path / "a.db")}, require_management_token=False)
    store = await open_storage(settings.storage, KeyCipher(None), migrate=True)
    yield store
    await store.aclose()


def make_authenticator(storage: Any, usage: RecordingUsage, ttl: float = 60.0) -> Authenticator:
    return Authenticator(storage, usage, SystemClock(), ttl=ttl, max_entries=100, enforce_project_active=True,
                         key_ttl=60.0, key_max=100)


async def issue(storage: SqlStorage, **fields: Any) -> tuple[str, str, str]:
    project = await storage.projects.create(f"p-{generate_token()[-6:]}", "sk-upstream-key-000")
    secret = generate_token()
    token = await storage.tokens.create(
        project_id=project.id, token_hash=hash_token(secret), token_hint=token_hint(secret),
        expires_at=fields.pop("expires_at", datetime.now(UTC) + timedelta(hours=1)),
        max_requests=fields.pop("max_requests", None), metadata=fields.pop("metadata", {}))
    return project.id, token.id, secret


async def refusal(auth: Authenticator, secret: str) -> tuple[int, str | None]:
    with pytest.raises(ProxyError) as info:
        await auth.authenticate(f"Bearer {secret}")
    return info.value.status, info.value.code


class TestAuthenticator:
    async def test_valid_token_grants_and_counts_unlimited_usage_in_batches(self, storage: SqlStorage) -> None:
        usage = RecordingUsage()
        auth = make_authenticator(storage, usage)
        project_id, token_id, secret = await issue(storage, metadata={"user_id": "u1"})
        grant = await auth.authenticate(f"Bearer {secret}")
        await auth.authenticate(f"bearer  {secret} ")
        assert grant.project_id == project_id and grant.metadata == {"user_id": "u1"}
        assert usage.requests == [token_id, token_id]
        assert await auth.upstream_key(project_id) == "sk-upstream-key-000"

    async def test_revocation_applies_at_once_after_forget(self, storage: SqlStorage) -> None:
        auth = make_authenticator(storage, RecordingUsage(), ttl=3600)
        _, token_id, secret = await issue(storage)
        await auth.authenticate(f"Bearer {secret}")
        await storage.tokens.revoke(token_id)
        auth.forget_token(token_id)
        assert await refusal(auth, secret) == (401, "token_inactive")

    async def test_other_workers_see_revocation_within_the_ttl(self, storage: SqlStorage) -> None:
        auth = make_authenticator(storage, RecordingUsage(), ttl=0.0)
        _, token_id, secret = await issue(storage)
        await auth.authenticate(f"Bearer {secret}")
        await storage.tokens.revoke(token_id)
        assert await refusal(auth, secret) == (401, "token_inactive")

    async def test_project_deactivation_is_403(self, storage: SqlStorage) -> None:
        auth = make_authenticator(storage, RecordingUsage())
        project_id, _, secret = await issue(storage)
        await auth.authenticate(f"Bearer {secret}")
        await storage.projects.update(project_id, is_active=False)
        auth.forget_project(project_id)
        assert await refusal(auth, secret) == (403, "project_inactive")

    async def test_expired_and_unknown_tokens(self, storage: SqlStorage) -> None:
        auth = make_authenticator(storage, RecordingUsage())
        _, _, secret = await issue(storage, expires_at=datetime.now(UTC) - timedelta(seconds=1))
        assert await refusal(auth, secret) == (401, "token_expired")
        assert await refusal(auth, generate_token()) == (401, "token_not_found")

    async def test_limited_tokens_are_charged_in_the_database(self, storage: SqlStorage) -> None:
        usage = RecordingUsage()
        auth = make_authenticator(storage, usage)
        _, token_id, secret = await issue(storage, max_requests=2)
        await auth.authenticate(f"Bearer {secret}")
        await auth.authenticate(f"Bearer {secret}")
        assert await refusal(auth, secret) == (429, "rate_limit_exceeded")
        record = await storage.tokens.get(token_id)
        assert record is not None and record.request_count == 2
        assert usage.requests == []

    async def test_uncounted_authentication_does_not_charge(self, storage: SqlStorage) -> None:
        usage = RecordingUsage()
        auth = make_authenticator(storage, usage)
        await auth.authenticate(f"Bearer {(await issue(storage))[2]}", count=False)
        assert usage.requests == []

    async def test_database_failure_is_503_never_401(self, storage: SqlStorage) -> None:
        _, _, secret = await issue(storage)

        class FailingTokens:
            async def get_by_hash(self, token_hash: str) -> None:
                raise StorageError("connection refused")

        class BrokenStorage:
            tokens = FailingTokens()
            projects = storage.projects

        auth = make_authenticator(BrokenStorage(), RecordingUsage())
        assert await refusal(auth, secret) == (503, "service_unavailable")
