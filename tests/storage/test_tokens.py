from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llm_proxy.errors import DuplicateError, StorageError
from llm_proxy.records import Project, QuotaOutcome, Token, UsageDelta
from llm_proxy.storage import RevokeResult
from llm_proxy.storage.database import SqlStorage
from llm_proxy.tokens.format import generate_token, hash_token, token_hint
from tests.storage.conftest import ManualClock


async def make_token(
    storage: SqlStorage,
    project: Project,
    *,
    expires_at: datetime | None = None,
    max_requests: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Token:
    secret = generate_token()
    return await storage.tokens.create(
        project_id=project.id, token_hash=hash_token(secret), token_hint=token_hint(secret),
        expires_at=expires_at, max_requests=max_requests, metadata=metadata or {},
    )


async def fetch(storage: SqlStorage, token_id: str) -> Token:
    token = await storage.tokens.get(token_id)
    assert token is not None
    return token


@pytest.fixture
async def project(storage: SqlStorage) -> Project:
    return await storage.projects.create("alpha", "sk-upstream")


class TestTokenCrud:
    async def test_create_then_get_and_get_by_hash(
        self, storage: SqlStorage, project: Project, clock: ManualClock
    ) -> None:
        expires = clock.now() + timedelta(days=1, microseconds=7)
        meta = {"user": "ünïcode", "tags": ["a", "b"], "n": 3, "nested": {"x": None}}
        created = await make_token(storage, project, expires_at=expires, max_requests=5,
                                   metadata=meta)

        assert await storage.tokens.get(created.id) == created
        assert await storage.tokens.get_by_hash(created.token_hash) == created
        fetched = await fetch(storage, created.id)
        assert fetched.metadata == meta
        assert fetched.expires_at == expires
        assert fetched.expires_at.tzinfo is UTC
        assert (fetched.request_count, fetched.cache_hit_count, fetched.is_active) == (0, 0, True)

    async def test_unknown_ids_and_hashes_are_none(self, storage: SqlStorage) -> None:
        assert await storage.tokens.get("missing") is None
        assert await storage.tokens.get_by_hash("0" * 64) is None

    async def test_duplicate_hash_raises_duplicate_error(
        self, storage: SqlStorage, project: Project
    ) -> None:
        token = await make_token(storage, project)

        with pytest.raises(DuplicateError):
            await storage.tokens.create(
                project_id=project.id, token_hash=token.token_hash, token_hint="x",
                expires_at=None, max_requests=None, metadata={},
            )

    async def test_token_of_unknown_project_is_refused(self, storage: SqlStorage) -> None:
        with pytest.raises(StorageError):
            await storage.tokens.create(
                project_id="missing", token_hash="a" * 64, token_hint="x",
                expires_at=None, max_requests=None, metadata={},
            )

    async def test_list_is_newest_first_filtered_and_counted(
        self, storage: SqlStorage, project: Project, clock: ManualClock
    ) -> None:
        other = await storage.projects.create("beta", "k")
        first = await make_token(storage, project)
        clock.advance(1)
        expired = await make_token(storage, project, expires_at=clock.now())
        clock.advance(1)
        revoked = await make_token(storage, project)
        await storage.tokens.revoke(revoked.id)
        clock.advance(1)
        foreign = await make_token(storage, other)

        all_ids = [t.id for t in await storage.tokens.list()]
        mine = [t.id for t in await storage.tokens.list(project_id=project.id)]
        active = [t.id for t in await storage.tokens.list(project_id=project.id, active_only=True)]

        assert all_ids == [foreign.id, revoked.id, expired.id, first.id]
        assert mine == [revoked.id, expired.id, first.id]
        assert active == [first.id]
        assert [t.id for t in await storage.tokens.list(limit=2, offset=1)] == [revoked.id, expired.id]
        assert await storage.tokens.count() == 4
        assert await storage.tokens.count(project_id=project.id, active_only=True) == 1

    async def test_update_changes_only_given_columns(
        self, storage: SqlStorage, project: Project
    ) -> None:
        token = await make_token(storage, project, max_requests=3, metadata={"a": 1})
        await storage.tokens.consume_quota(token.id, datetime.now(UTC))

        limited = await storage.tokens.update(token.id, max_requests=None)
        relabelled = await storage.tokens.update(token.id, metadata={"b": 2})

        assert limited is not None
        assert relabelled is not None
        assert (limited.max_requests, limited.metadata, limited.request_count) == (None, {"a": 1}, 1)
        assert (relabelled.max_requests, relabelled.metadata) == (None, {"b": 2})
        assert await storage.tokens.update(token.id) == relabelled
        assert await storage.tokens.update("missing", max_requests=1) is None

    async def test_deactivating_through_update_persists_deactivated_at(
        self, storage: SqlStorage, project: Project, clock: ManualClock
    ) -> None:
        token = await make_token(storage, project)

        off = await storage.tokens.update(token.id, is_active=False)
        on = await storage.tokens.update(token.id, is_active=True)

        assert off is not None
        assert on is not None
        assert (off.is_active, off.deactivated_at) == (False, clock.now())
        assert (on.is_active, on.deactivated_at) == (True, None)


class TestRevocation:
    async def test_revoke_reports_first_time_then_already_then_unknown(
        self, storage: SqlStorage, project: Project, clock: ManualClock
    ) -> None:
        token = await make_token(storage, project)
        revoked_at = clock.now()

        assert await storage.tokens.revoke(token.id) is True
        clock.advance(30)
        assert await storage.tokens.revoke(token.id) is False
        assert await storage.tokens.revoke("missing") is None
        stored = await fetch(storage, token.id)
        assert (stored.is_active, stored.deactivated_at) == (False, revoked_at)

    async def test_revoke_project_counts_revoked_and_already_revoked(
        self, storage: SqlStorage, project: Project
    ) -> None:
        other = await storage.projects.create("beta", "k")
        tokens = [await make_token(storage, project) for _ in range(3)]
        untouched = await make_token(storage, other)
        await storage.tokens.revoke(tokens[0].id)

        result = await storage.tokens.revoke_project(project.id)

        assert result == RevokeResult(revoked=2, already_revoked=1, total=3)
        assert await storage.tokens.count(project_id=project.id, active_only=True) == 0
        assert all([(await fetch(storage, t.id)).deactivated_at for t in tokens])
        assert (await fetch(storage, untouched.id)).is_active
        assert await storage.tokens.revoke_project("missing") == RevokeResult(0, 0, 0)


class TestConsumeQuota:
    async def test_outcomes(self, storage: SqlStorage, project: Project, clock: ManualClock) -> None:
        now = clock.now()
        unlimited = await make_token(storage, project)
        one_left = await make_token(storage, project, max_requests=1)
        expired = await make_token(storage, project, expires_at=now)
        revoked = await make_token(storage, project)
        await storage.tokens.revoke(revoked.id)

        assert await storage.tokens.consume_quota(unlimited.id, now) is QuotaOutcome.OK
        assert await storage.tokens.consume_quota(one_left.id, now) is QuotaOutcome.OK
        assert await storage.tokens.consume_quota(one_left.id, now) is QuotaOutcome.EXHAUSTED
        assert await storage.tokens.consume_quota(expired.id, now) is QuotaOutcome.EXPIRED
        assert await storage.tokens.consume_quota(revoked.id, now) is QuotaOutcome.INACTIVE
        assert await storage.tokens.consume_quota("missing", now) is QuotaOutcome.NOT_FOUND
        counted = await fetch(storage, one_left.id)
        assert (counted.request_count, counted.last_used_at) == (1, now)

    async def test_fifty_concurrent_calls_on_a_quota_of_ten_let_exactly_ten_through(
        self, storage: SqlStorage, project: Project
    ) -> None:
        token = await make_token(storage, project, max_requests=10)
        now = datetime.now(UTC)

        outcomes = await asyncio.gather(
            *(storage.tokens.consume_quota(token.id, now) for _ in range(50))
        )

        assert Counter(outcomes) == {QuotaOutcome.OK: 10, QuotaOutcome.EXHAUSTED: 40}
        assert (await fetch(storage, token.id)).request_count == 10


class TestApplyUsage:
    async def test_adds_deltas_keeps_latest_use_and_skips_unknown_tokens(
        self, storage: SqlStorage, project: Project, clock: ManualClock
    ) -> None:
        a = await make_token(storage, project)
        b = await make_token(storage, project)
        early, late = clock.now(), clock.now() + timedelta(minutes=5)

        await storage.tokens.apply_usage({
            a.id: UsageDelta(requests=3, cache_hits=1, last_used_at=late),
            b.id: UsageDelta(cache_hits=2),
            "missing": UsageDelta(requests=1, last_used_at=late),
        })
        await storage.tokens.apply_usage({a.id: UsageDelta(requests=2, last_used_at=early)})

        first, second = await fetch(storage, a.id), await fetch(storage, b.id)
        assert (first.request_count, first.cache_hit_count, first.last_used_at) == (5, 1, late)
        assert (second.request_count, second.cache_hit_count, second.last_used_at) == (0, 2, None)

    async def test_empty_batch_is_a_no_op(self, storage: SqlStorage) -> None:
        await storage.tokens.apply_usage({})
