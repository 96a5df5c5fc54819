"""Closed-loop HTTP load generation, shared by `llm-proxy benchmark` and `benchmarks/run.py`.

Each worker keeps one request in flight over a pooled keep-alive session, so the concurrency is
fixed. A request's latency runs from just before it is sent to its last body byte; its
time-to-first-byte (TTFB) runs to the first body chunk, which for a server-sent-event stream is
the first event.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")

CACHE_HIT_VALUES = frozenset({"hit", "conditional-hit"})
DEBUG_BODY_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request, repeated by every worker."""

    url: str
    method: str = "POST"
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Sample:
    """The outcome of one request. `status` 0 means a network error or a timeout."""

    status: int
    end: float
    latency: float
    ttfb: float | None = None
    cache: str = ""
    upstream: float | None = None
    proxy: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Exchange:
    """A captured response (for `--debug`): the first one seen of each status code."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    error: str = ""


@dataclass(slots=True)
class Progress:
    """Live counters; `completed` counts every finished request, `failed` those not 2xx."""

    sent: int = 0
    completed: int = 0
    failed: int = 0

    def line(self) -> str:
        return f"Requests sent: {self.sent}, completed: {self.completed}, failed: {self.failed}"


@dataclass(frozen=True, slots=True)
class Run:
    samples: list[Sample]
    wall: float
    concurrency: int
    completed: int = 0
    """Every request that finished, warm-up and lead-out included (for per-call costs)."""


@dataclass(frozen=True, slots=True)
class Stats:
    """Order statistics of durations in seconds; percentiles by nearest rank."""

    count: int
    avg: float
    min: float
    max: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Stats | None:
        ordered = sorted(values)
        if not ordered:
            return None
        return cls(len(ordered), sum(ordered) / len(ordered), ordered[0], ordered[-1],
                   percentile(ordered, 0.50), percentile(ordered, 0.90), percentile(ordered, 0.99))

    def to_ms(self) -> dict[str, float | int]:
        fields = {"avg": self.avg, "min": self.min, "max": self.max,
                  "p50": self.p50, "p90": self.p90, "p99": self.p99}
        return {"count": self.count} | {f"{k}_ms": round(v * 1000, 3) for k, v in fields.items()}


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    concurrency: int
    duration: float
    success: int
    failed: int
    rps: float
    latency: Stats | None
    ttfb: Stats | None
    statuses: dict[int, int]
    cache_hits: int
    upstream: Stats | None
    proxy: Stats | None

    def to_dict(self) -> dict[str, Any]:
        def ms(stats: Stats | None) -> dict[str, float | int] | None:
            return None if stats is None else stats.to_ms()

        return {
            "total_requests": self.total, "concurrency": self.concurrency,
            "duration_s": round(self.duration, 3), "success": self.success,
            "failed": self.failed, "requests_per_second": round(self.rps, 2),
            "latency": ms(self.latency), "ttfb": ms(self.ttfb),
            "status_codes": {str(code): n for code, n in sorted(self.statuses.items())},
            "cache_hits": self.cache_hits, "upstream_latency": ms(self.upstream),
            "proxy_latency": ms(self.proxy),
        }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(run: Run) -> Summary:
    samples = run.samples
    success = sum(1 for s in samples if s.ok)
    good = [s for s in samples if s.ok]
    return Summary(
        total=len(samples), concurrency=run.concurrency, duration=run.wall, success=success,
        failed=len(samples) - success, rps=len(samples) / run.wall if run.wall > 0 else 0.0,
        latency=Stats.of(s.latency for s in samples),
        ttfb=Stats.of(s.ttfb for s in good if s.ttfb is not None),
        statuses=dict(Counter(s.status for s in samples)),
        cache_hits=sum(1 for s in samples if s.cache in CACHE_HIT_VALUES),
        upstream=Stats.of(s.upstream for s in good if s.upstream is not None),
        proxy=Stats.of(s.proxy for s in good if s.proxy is not None),
    )


def split_evenly(total: int, workers: int) -> list[int]:
    """`total` requests over `workers`, the remainder going to the first workers."""
    base, extra = divmod(total, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def _unix_ns(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _split_timing(headers: Mapping[str, str], start_ns: int,
                  end_ns: int) -> tuple[float | None, float | None]:
    """Upstream and proxy time from the proxy's `X-UPSTREAM-REQUEST-START/STOP` stamps."""
    up_start = _unix_ns(headers.get("X-UPSTREAM-REQUEST-START"))
    up_stop = _unix_ns(headers.get("X-UPSTREAM-REQUEST-STOP"))
    if up_start is None or up_stop is None:
        return None, None
    return (up_stop - up_start) / 1e9, ((up_start - start_ns) + (end_ns - up_stop)) / 1e9


class Client:
    """Sends a `RequestSpec` and measures it; optionally captures one exchange per status."""

    def __init__(self, session: aiohttp.ClientSession, spec: RequestSpec,
                 progress: Progress | None = None,
                 captures: dict[int, Exchange] | None = None) -> None:
        self.session = session
        self.spec = spec
        self.progress = progress if progress is not None else Progress()
        self.captures = captures

    async def send(self) -> Sample:
        spec, progress = self.spec, self.progress
        progress.sent += 1
        start_ns = time.time_ns()
        start = time.perf_counter()
        headers = {**spec.headers, "X-REQUEST-START": str(start_ns)}
        try:
            async with self.session.request(spec.method, spec.url, data=spec.body,
                                            headers=headers) as resp:
                sample = await self._receive(resp, start, start_ns)
        except (aiohttp.ClientError, TimeoutError) as exc:
            end = time.perf_counter()
            self._capture(0, (), b"", f"{type(exc).__name__}: {exc}")
            sample = Sample(status=0, end=end, latency=end - start)
        progress.completed += 1
        if not sample.ok:
            progress.failed += 1
        return sample

    async def _receive(self, resp: aiohttp.ClientResponse, start: float,
                       start_ns: int) -> Sample:
        keep = self.captures is not None and resp.status not in self.captures
        first: float | None = None
        parts: list[bytes] = []
        async for chunk in resp.content.iter_any():
            if first is None:
                first = time.perf_counter()
            if keep:
                parts.append(chunk)
        end = time.perf_counter()
        upstream, proxy = _split_timing(resp.headers, start_ns, time.time_ns())
        if keep:
            self._capture(resp.status, tuple(resp.headers.items()), b"".join(parts), "")
        return Sample(status=resp.status, end=end, latency=end - start,
                      ttfb=None if first is None else first - start,
                      cache=resp.headers.get("X-PROXY-CACHE", "").strip().lower(),
                      upstream=upstream, proxy=proxy)

    def _capture(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes,
                 error: str) -> None:
        if self.captures is not None and status not in self.captures:
            self.captures[status] = Exchange(status, headers, body[:DEBUG_BODY_LIMIT], error)


@asynccontextmanager
async def open_session(spec: RequestSpec,
                       concurrency: int) -> AsyncIterator[aiohttp.ClientSession]:
    """A keep-alive session with one pooled connection per worker."""
    connector = aiohttp.TCPConnector(limit=max(1, concurrency), limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def run_requests(spec: RequestSpec, total: int, concurrency: int,
                       progress: Progress | None = None,
                       captures: dict[int, Exchange] | None = None) -> Run:
    """Send exactly `total` requests from `concurrency` workers."""

    async def worker(client: Client, count: int) -> list[Sample]:
        return [await client.send() for _ in range(count)]

    async with open_session(spec, concurrency) as session:
        client = Client(session, spec, progress, captures)
        started = time.perf_counter()
        shares = [n for n in split_evenly(total, concurrency) if n]
        results = await asyncio.gather(*(worker(client, n) for n in shares))
        wall = time.perf_counter() - started
    return Run([s for batch in results for s in batch], wall, concurrency)


async def run_for(spec: RequestSpec, concurrency: int, duration: float, warmup: float = 0.0,
                  session: aiohttp.ClientSession | None = None) -> Run:
    """Keep `concurrency` requests in flight for `warmup + duration` seconds.

    Only requests that finish inside the measured window count, so RPS is the completion rate.
    Pass a `session` to keep its warm connections across several calls.
    """
    if session is None:
        async with open_session(spec, concurrency) as own:
            return await run_for(spec, concurrency, duration, warmup, own)
    client = Client(session, spec)
    window_start = time.perf_counter() + warmup
    window_end = window_start + duration

    async def worker() -> list[Sample]:
        samples = []
        while time.perf_counter() < window_end:
            samples.append(await client.send())
        return samples

    results = await asyncio.gather(*(worker() for _ in range(concurrency)))
    inside = [s for batch in results for s in batch if window_start <= s.end <= window_end]
    return Run(inside, duration, concurrency, sum(map(len, results)))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on uvloop when it is installed, else on the default loop."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)
