"""Spend thresholds and hard budgets: the guard and ledger on real SQLite, then a live proxy.

Several "workers" are several SpendLedger/BudgetGuard pairs sharing one database, which is all a
worker process shares with the others.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llm_proxy.audit import AuditRecorder
from llm_proxy.errors import ProxyError
from llm_proxy.records import AuditQuery, Project, SpendLimits, SpendScope
from llm_proxy.settings import load_settings
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import SqlStorage, open_storage
from llm_proxy.storage.engine import engine_for_url
from llm_proxy.storage.spend import SqlSpendStore
from llm_proxy.telemetry import Telemetry
from llm_proxy.tokens.authenticator import Grant
from llm_proxy.tokens.budget import BudgetGuard
from llm_proxy.tokens.format import generate_token, hash_token, token_hint
from llm_proxy.tokens.spend import THRESHOLD_EXCEEDED, SpendLedger

T0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.current = T0

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()


@dataclass
class Worker:
    ledger: SpendLedger
    guard: BudgetGuard
    audit: AuditRecorder
    alerts: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    async def call(self, grant: Grant, cost: float | None, hold: float = 0.0) -> None:
        ticket = await self.guard.admit(grant)
        await asyncio.sleep(hold)
        ticket.settle(cost)


@dataclass
class Env:
    storage: SqlStorage
    clock: Clock
    tmp: Path
    workers: list[Worker] = field(default_factory=list)

    async def worker(self, store: Any = None, interval: float = 60.0) -> Worker:
        settings = load_settings({"AUDIT_LOG_FILE": str(self.tmp / f"audit-{len(self.workers)}.log")},
                                 require_management_token=False)
        audit = AuditRecorder(settings.audit, self.storage.audit, self.clock)
        telemetry = Telemetry()
        ledger = SpendLedger(store or self.storage.spend, self.clock, flush_interval=interval, telemetry=telemetry,
                             audit=audit, logger=logging.getLogger("tests.budgets"))
        worker = Worker(ledger, BudgetGuard(ledger), audit)
        telemetry.attach("alerts", THRESHOLD_EXCEEDED, lambda _n, m, md, _c: worker.alerts.append((m, md)))
        await ledger.start()
        self.workers.append(worker)
        return worker

    async def grant(self, project: SpendLimits | None = None, token: SpendLimits | None = None,
                    of: Project | None = None) -> Grant:
        owner = of or await self.storage.projects.create(f"p-{generate_token()[-8:]}", "sk-upstream",
                                                         limits=project or SpendLimits())
        secret = generate_token()
        issued = await self.storage.tokens.create(
            project_id=owner.id, token_hash=hash_token(secret), token_hint=token_hint(secret), expires_at=None,
            max_requests=None, metadata={}, limits=token or SpendLimits())
        return Grant(token=issued, project_active=True, expires_ts=None, cached_until=float("inf"),
                     project_limits=owner.limits, token_limits=issued.limits)

    async def spent(self, kind: str, record_id: str, since: datetime) -> float:
        for worker in self.workers:
            assert await worker.ledger.flush()
        totals = await self.storage.spend.totals({SpendScope(kind, record_id): since})
        return totals[SpendScope(kind, record_id)].usd if totals else 0.0


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("budgets") / "template.db"

    async def migrate() -> None:
        settings = load_settings({"DATABASE_PATH": str(path)}, require_management_token=False)
        await (await open_storage(settings.storage, KeyCipher(None), migrate=True)).aclose()

    asyncio.run(migrate())
    return path


@pytest.fixture
async def env(tmp_path: Path, template: Path) -> AsyncIterator[Env]:
    shutil.copyfile(template, tmp_path / "spend.db")
    settings = load_settings({"DATABASE_PATH": str(tmp_path / "spend.db")}, require_management_token=False)
    clock = Clock()
    storage = await open_storage(settings.storage, KeyCipher(None), migrate=False, clock=clock)
    built = Env(storage, clock, tmp_path)
    try:
        yield built
    finally:
        for worker in built.workers:
            await worker.ledger.aclose()
            await worker.audit.aclose()
        await storage.aclose()


async def refusal(worker: Worker, grant: Grant) -> ProxyError:
    with pytest.raises(ProxyError) as info:
        await worker.call(grant, 0.0)
    return info.value


async def audited_alerts(env: Env) -> list[Any]:
    for worker in env.workers:
        await worker.audit.flush()
    entries, _ = await env.storage.audit.query(AuditQuery(action="cost.threshold_exceeded"), page=1, page_size=50)
    return entries


class TestThresholds:
    async def test_an_alert_fires_once_per_period_across_two_workers(self, env: Env) -> None:
        a, b = await env.worker(), await env.worker()
        grant = await env.grant(project=SpendLimits(cost_alert_threshold=1.0))

        await a.call(grant, 0.6)
        assert await a.ledger.flush()
        await b.call(grant, 0.6)
        assert await b.ledger.flush()
        for _ in range(2):
            await a.call(grant, 0.5)
            await b.call(grant, 0.5)
            assert await b.ledger.flush() and await a.ledger.flush()

        [(measurements, metadata)] = a.alerts + b.alerts
        assert measurements["threshold_usd"] == 1.0
        assert measurements["spent_usd"] == pytest.approx(1.2)
        assert metadata["scope"] == "project" and metadata["token_id"] is None
        assert metadata["project_id"] == grant.project_id
        assert (metadata["period"], metadata["period_start"]) == ("monthly", datetime(2030, 1, 1, tzinfo=UTC))
        [entry] = await audited_alerts(env)
        assert (entry.actor, entry.outcome, entry.project_id) == ("system", "success", grant.project_id)
        assert entry.details["threshold_usd"] == 1.0

    async def test_the_next_period_alerts_again(self, env: Env) -> None:
        worker = await env.worker()
        grant = await env.grant(token=SpendLimits(cost_alert_threshold=0.5, budget_period="daily"))

        await worker.call(grant, 0.75)
        assert await worker.ledger.flush()
        env.clock.current += timedelta(hours=1)
        await worker.call(grant, 0.75)
        assert await worker.ledger.flush()
        env.clock.current += timedelta(days=1)
        await worker.call(grant, 0.25)
        assert await worker.ledger.flush()
        assert len(worker.alerts) == 1, "0.25 today is below the threshold"
        await worker.call(grant, 0.25)
        assert await worker.ledger.flush()

        starts = [metadata["period_start"] for _, metadata in worker.alerts]
        assert starts == [datetime(2030, 1, 15, tzinfo=UTC), datetime(2030, 1, 16, tzinfo=UTC)]
        assert {metadata["token_id"] for _, metadata in worker.alerts} == {grant.token.id}
        assert [entry.token_id for entry in await audited_alerts(env)] == [grant.token.id] * 2


class TestBudgets:
    async def test_calls_are_refused_with_429_once_the_spend_reaches_the_budget(self, env: Env) -> None:
        worker = await env.worker()
        grant = await env.grant(token=SpendLimits(max_budget=1.0, budget_period="daily"))
        sibling = await env.grant(of=await env.storage.projects.get(grant.project_id))

        for _ in range(3):
            await worker.call(grant, 0.4)
        error = await refusal(worker, grant)
        await worker.call(sibling, 0.4)

        assert (error.status, error.code, error.type) == (429, "budget_exceeded", "insufficient_quota")
        assert error.message == ("Budget exceeded: the token's daily budget of $1 is used up; "
                                 "it resets at 2030-01-16T00:00:00Z")
        assert await env.spent("token", grant.token.id, T0 - timedelta(hours=12)) == pytest.approx(1.2)

    async def test_another_workers_spend_counts_once_written(self, env: Env) -> None:
        a, b = await env.worker(), await env.worker()
        grant = await env.grant(project=SpendLimits(max_budget=2.0, budget_period="total"))

        await a.call(grant, 2.5)
        assert await a.ledger.flush()

        assert (await refusal(b, grant)).message == "Budget exceeded: the project's total budget of $2 is used up"

    async def test_a_new_period_starts_from_zero(self, env: Env) -> None:
        worker = await env.worker()
        grant = await env.grant(project=SpendLimits(max_budget=1.0, budget_period="weekly"))

        await worker.call(grant, 1.0)
        await refusal(worker, grant)
        env.clock.current = datetime(2030, 1, 20, 23, 59, tzinfo=UTC)
        await refusal(worker, grant)
        env.clock.current = datetime(2030, 1, 21, 0, 0, tzinfo=UTC)
        await worker.call(grant, 0.5)

        assert await env.spent("project", grant.project_id, datetime(2030, 1, 21, tzinfo=UTC)) == 0.5
        assert await env.spent("project", grant.project_id, datetime(2030, 1, 14, tzinfo=UTC)) == 1.5

    async def test_20_concurrent_calls_overshoot_by_at_most_one_call(self, env: Env) -> None:
        worker = await env.worker()
        grant = await env.grant(project=SpendLimits(max_budget=1.0))
        cost = 0.15

        results = await asyncio.gather(*(worker.call(grant, cost, hold=0.01) for _ in range(20)),
                                       return_exceptions=True)

        refused = [r for r in results if isinstance(r, ProxyError)]
        assert all(r.code == "budget_exceeded" for r in refused)
        assert refused and len(refused) + results.count(None) == 20
        spent = await env.spent("project", grant.project_id, datetime(2030, 1, 1, tzinfo=UTC))
        assert 1.0 <= spent <= 1.0 + cost
        assert spent == pytest.approx(cost * results.count(None))

    @pytest.mark.parametrize("count", [2, 3])
    async def test_several_workers_overshoot_by_at_most_one_call_each(self, env: Env, count: int) -> None:
        workers = [await env.worker(interval=0.02) for _ in range(count)]
        for worker in workers:
            assert await worker.ledger.flush()
        assert {worker.ledger.workers for worker in workers} == {count}
        grant = await env.grant(project=SpendLimits(max_budget=1.0, budget_period="daily"))
        cost = 0.05

        results = await asyncio.gather(*(w.call(grant, cost, hold=0.003) for _ in range(20) for w in workers),
                                       return_exceptions=True)

        assert all(r is None or (isinstance(r, ProxyError) and r.code == "budget_exceeded") for r in results)
        spent = await env.spent("project", grant.project_id, datetime(2030, 1, 15, tzinfo=UTC))
        assert 1.0 - 1e-9 <= spent <= 1.0 + count * cost + 1e-9
        assert spent == pytest.approx(cost * results.count(None))

    async def test_calls_without_usage_free_their_place_and_cost_nothing(self, env: Env) -> None:
        worker = await env.worker()
        grant = await env.grant(project=SpendLimits(max_budget=0.5))

        await asyncio.gather(*(worker.call(grant, None, hold=0.005) for _ in range(5)))
        await worker.call(grant, 0.5)

        assert (await refusal(worker, grant)).code == "budget_exceeded"

    async def test_an_unreachable_spend_store_is_a_503(self, env: Env) -> None:
        engine = engine_for_url("postgresql+asyncpg://postgres@127.0.0.1:1/none", pooled=False)
        try:
            worker = await env.worker(store=SqlSpendStore(engine))
            grant = await env.grant(project=SpendLimits(max_budget=1.0))

            error = await refusal(worker, grant)
            unbudgeted = await env.grant()
            await worker.call(unbudgeted, 0.1)
        finally:
            await engine.dispose()

        assert (error.status, error.code) == (503, "service_unavailable")
