"""SqlSpendStore and the spend settings of projects and tokens, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from llm_proxy.records import LeaseGrant, LeaseRequest, SpendAmount, SpendLimits, SpendScope
from llm_proxy.storage import UNSET, LimitsUpdate
from llm_proxy.storage.database import SqlStorage
from llm_proxy.storage.tables import spend, spend_alerts, spend_leases, spend_workers
from llm_proxy.tokens.format import generate_token, hash_token, token_hint

DAY1 = datetime(2030, 1, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
P = SpendScope("project", "0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10")
T = SpendScope("token", "0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10")
OTHER = SpendScope("project", "9a6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e11")


@pytest.fixture
async def store(storage: SqlStorage) -> SqlStorage:
    """The storage with the spend tables emptied (the shared server databases outlive a test)."""
    async with storage.engine.begin() as conn:
        for table in (spend, spend_alerts, spend_workers, spend_leases):
            await conn.execute(sa.delete(table))
    return storage


class TestSpendStore:
    async def test_adds_accumulate_per_day_and_totals_sum_the_days_since(self, store: SqlStorage) -> None:
        await store.spend.add({(P, DAY1): SpendAmount(1.25, 1.0), (P, DAY2): SpendAmount(0.5, 0.5)})
        await store.spend.add({(P, DAY2): SpendAmount(0.25, 0.25), (T, DAY2): SpendAmount(2.0, 2.0)})

        everything = await store.spend.totals({P: DAY1, T: DAY1})
        from_day2 = await store.spend.totals({P: DAY2})

        assert everything == {P: SpendAmount(2.0, 1.0), T: SpendAmount(2.0, 2.0)}
        assert from_day2 == {P: SpendAmount(0.75, 0.5)}
        assert await store.spend.totals({P: DAY3, OTHER: DAY1}) == {}

    async def test_scopes_with_different_starts_are_read_in_one_call(self, store: SqlStorage) -> None:
        await store.spend.add({(P, DAY1): SpendAmount(1.0, 1.0), (P, DAY2): SpendAmount(2.0, 2.0),
                               (OTHER, DAY1): SpendAmount(4.0, 4.0), (OTHER, DAY2): SpendAmount(8.0, 8.0)})

        totals = await store.spend.totals({P: DAY2, OTHER: DAY1})

        assert totals == {P: SpendAmount(2.0, 2.0), OTHER: SpendAmount(12.0, 8.0)}

    async def test_concurrent_adds_lose_no_increment(self, store: SqlStorage) -> None:
        async def add_many() -> None:
            for _ in range(5):
                await store.spend.add({(P, DAY1): SpendAmount(0.125, 0.125), (T, DAY1): SpendAmount(0.5, 0.5)})

        await asyncio.gather(*(add_many() for _ in range(8)))

        assert await store.spend.totals({P: DAY1, T: DAY1}) == {
            P: SpendAmount(5.0, 0.125), T: SpendAmount(20.0, 0.5),
        }

    async def test_the_largest_call_is_kept(self, store: SqlStorage) -> None:
        await store.spend.add({(P, DAY1): SpendAmount(3.0, 3.0)})
        await store.spend.add({(P, DAY1): SpendAmount(1.0, 1.0)})

        assert await store.spend.totals({P: DAY1}) == {P: SpendAmount(4.0, 3.0)}

    async def test_an_alert_is_claimed_once_per_scope_and_period(self, store: SqlStorage) -> None:
        claims = [
            await store.spend.claim_alert(P, "monthly", DAY1, threshold=1.0, spent=1.5, at=DAY2),
            await store.spend.claim_alert(P, "monthly", DAY1, threshold=1.0, spent=2.5, at=DAY3),
            await store.spend.claim_alert(P, "daily", DAY1, threshold=1.0, spent=1.5, at=DAY2),
            await store.spend.claim_alert(P, "monthly", DAY2, threshold=1.0, spent=1.5, at=DAY2),
            await store.spend.claim_alert(T, "monthly", DAY1, threshold=1.0, spent=1.5, at=DAY2),
        ]

        assert claims == [True, False, True, True, True]

    async def test_concurrent_claims_have_one_winner(self, store: SqlStorage) -> None:
        claims = await asyncio.gather(*(
            store.spend.claim_alert(P, "weekly", DAY1, threshold=1.0, spent=1.5, at=DAY2) for _ in range(6)
        ))

        assert sorted(claims) == [False] * 5 + [True]

    async def test_heartbeats_count_the_live_workers_and_forget_silent_ones(self, store: SqlStorage) -> None:
        def beat(worker: str, at: datetime) -> Awaitable[int]:
            return store.spend.heartbeat(worker, at, live_since=at - timedelta(seconds=10),
                                         forget_before=at - timedelta(hours=1))

        assert await beat("w1", DAY1) == 1
        assert await beat("w2", DAY1 + timedelta(seconds=1)) == 2
        assert await beat("w1", DAY1 + timedelta(seconds=2)) == 2, "a second beat is the same worker"
        assert await beat("w1", DAY1 + timedelta(seconds=12)) == 1, "w2 fell silent"
        assert await beat("w3", DAY2) == 1
        async with store.engine.connect() as conn:
            rows = (await conn.execute(sa.select(spend_workers.c.worker_id))).scalars().all()
        assert rows == ["w3"], "workers silent for an hour are forgotten"


def grant(store: SqlStorage, worker: str, need: float, *, budget: float = 1.0, workers: int = 1,
          start: datetime = DAY1, now: datetime = DAY2) -> Awaitable[LeaseGrant]:
    return store.spend.grant_lease(LeaseRequest(P, worker, start, budget, need, workers, now,
                                                now + timedelta(seconds=10)))


class TestLeases:
    async def test_a_grant_is_the_need_or_a_fair_part_of_what_is_free(self, store: SqlStorage) -> None:
        first = await grant(store, "w1", 0.1, workers=2)
        second = await grant(store, "w2", 0.1, workers=2)
        third = await grant(store, "w1", 0.5, workers=2)

        assert first == LeaseGrant(spent=0.0, others=0.0, held=0.25)
        assert second == LeaseGrant(spent=0.0, others=0.25, held=pytest.approx(0.1875))
        assert third == LeaseGrant(spent=0.0, others=pytest.approx(0.1875), held=pytest.approx(0.75))

    async def test_less_than_the_need_free_is_granted_only_when_asked_for(self, store: SqlStorage) -> None:
        await store.spend.add({(P, DAY1): SpendAmount(0.75, 0.5)})
        await grant(store, "w1", 0.2)

        refused = await grant(store, "w2", 0.2)
        rest = await store.spend.grant_lease(LeaseRequest(P, "w3", DAY1, 1.0, 0.2, 1, DAY2, DAY3, take_rest=True))

        assert refused == LeaseGrant(spent=0.75, others=0.2, held=0.0)
        assert rest == LeaseGrant(spent=0.75, others=0.2, held=pytest.approx(0.05))

    async def test_expired_leases_and_other_periods_do_not_count(self, store: SqlStorage) -> None:
        await grant(store, "w1", 0.5)
        await grant(store, "w2", 0.1, start=DAY2)

        later = await grant(store, "w3", 0.1, now=DAY2 + timedelta(seconds=11))

        assert (later.others, later.held) == (0.0, 0.5)

    async def test_concurrent_grants_never_lease_more_than_the_budget(self, store: SqlStorage) -> None:
        grants = await asyncio.gather(*(grant(store, f"w{i}", 0.1, budget=0.55) for i in range(8)))

        assert sum(g.held for g in grants) <= 0.55 + 1e-9
        assert sum(g.held > 0 for g in grants) >= 2

    async def test_set_leases_lowers_what_the_other_workers_see(self, store: SqlStorage) -> None:
        await grant(store, "w1", 0.5)
        await store.spend.set_leases("w1", {P: (DAY1, 0.05), T: (DAY1, 0.3)}, DAY2 + timedelta(seconds=10))

        seen = await grant(store, "w2", 0.1)
        token = await store.spend.grant_lease(LeaseRequest(T, "w2", DAY1, 1.0, 0.1, 1, DAY2, DAY3))

        assert seen.others == pytest.approx(0.05)
        assert token.others == pytest.approx(0.3)


class TestSpendLimits:
    async def test_projects_store_and_update_their_limits(self, store: SqlStorage) -> None:
        created = await store.projects.create("alpha", "k1", limits=SpendLimits(5.0, 10.0, "weekly"))
        assert created.limits == SpendLimits(5.0, 10.0, "weekly")

        updated = await store.projects.update(created.id, limits=LimitsUpdate(max_budget=None))
        renamed = await store.projects.update(created.id, name="beta")

        assert updated is not None and updated.limits == SpendLimits(5.0, None, "weekly")
        assert renamed is not None and renamed.limits == SpendLimits(5.0, None, "weekly")
        assert await store.projects.get(created.id) == renamed

    async def test_projects_default_to_no_limits_and_a_monthly_period(self, store: SqlStorage) -> None:
        created = await store.projects.create("alpha", "k1")

        fetched = await store.projects.get(created.id)

        assert fetched is not None and fetched.limits == SpendLimits(None, None, "monthly")

    async def test_tokens_store_and_update_their_limits(self, store: SqlStorage) -> None:
        project = await store.projects.create("alpha", "k1")
        secret = generate_token()
        token = await store.tokens.create(
            project_id=project.id, token_hash=hash_token(secret), token_hint=token_hint(secret),
            expires_at=None, max_requests=None, metadata={}, limits=SpendLimits(0.0, 0.25, "daily"),
        )

        updated = await store.tokens.update(
            token.id, limits=LimitsUpdate(cost_alert_threshold=None, budget_period="total"),
        )
        untouched = await store.tokens.update(token.id, limits=LimitsUpdate(max_budget=UNSET))

        assert token.limits == SpendLimits(0.0, 0.25, "daily")
        assert updated is not None and updated.limits == SpendLimits(None, 0.25, "total")
        assert untouched == updated
        assert await store.tokens.get_by_hash(hash_token(secret)) == updated
