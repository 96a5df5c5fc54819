"""The load generator process: runs one group of cells per JSON line read on stdin.

It lives in its own process so that it never shares an event loop (or a GIL) with anything
measured. A group is every target at one concurrency and request shape. Each target gets its
own warm keep-alive session; the measured time is cut into slices taken in turn (A B C, C B A,
A B C, ...), so a burst of machine noise lands on all targets alike. Each slice starts with a
short unmeasured lead-in that refills the connections.

Input line: a `Group` as JSON; output line: {target name: Summary.to_dict()}, plus
`cpu_us_per_call` when the target's process id is known: the CPU time the target's process used
from the start of the group to its end, over every call it answered in that time (warm-up and
lead-ins included). Other work on the machine disturbs this far less than requests per second.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from llm_proxy.loadgen import RequestSpec, Run, Sample, open_session, run_for, run_sync, summarize

LEAD_IN = 0.1


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    """The process answering at `url` (0: unknown, no CPU column)."""


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc; None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class Group:
    targets: list[Endpoint]
    concurrency: int
    duration: float
    warmup: float
    slices: int = 1
    method: str = "POST"
    body: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_json(cls, line: str) -> Group:
        data = json.loads(line)
        data["targets"] = [Endpoint(**t) for t in data["targets"]]
        return cls(**data)

    def to_line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @property
    def bound(self) -> float:
        """Seconds within which the group must answer: in-flight requests end by their timeout."""
        per_target = self.warmup + self.duration + self.slices * (LEAD_IN + self.timeout)
        return len(self.targets) * per_target + 10.0

    def spec(self, target: Endpoint) -> RequestSpec:
        return RequestSpec(url=target.url, method=self.method, headers=target.headers,
                           body=None if self.body is None else self.body.encode(),
                           timeout=self.timeout)


async def run_group(group: Group) -> dict[str, Any]:
    specs = {t.name: group.spec(t) for t in group.targets}
    samples: dict[str, list[Sample]] = {name: [] for name in specs}
    completed = dict.fromkeys(specs, 0)
    pids = {t.name: t.pid for t in group.targets}
    cpu_before = {name: cpu_seconds(pid) if pid else None for name, pid in pids.items()}
    order = list(specs)
    async with AsyncExitStack() as stack:
        sessions: dict[str, aiohttp.ClientSession] = {}
        for name, spec in specs.items():
            sessions[name] = await stack.enter_async_context(open_session(spec, group.concurrency))
            completed[name] += (await run_for(spec, group.concurrency, 0.0, group.warmup, sessions[name])).completed
        for i in range(group.slices):
            for name in order if i % 2 == 0 else reversed(order):
                run = await run_for(specs[name], group.concurrency, group.duration / group.slices,
                                    LEAD_IN, sessions[name])
                samples[name] += run.samples
                completed[name] += run.completed
    results = {}
    for name in order:
        result = summarize(Run(samples[name], group.duration, group.concurrency)).to_dict()
        before, after = cpu_before[name], cpu_seconds(pids[name]) if pids[name] else None
        if before is not None and after is not None and completed[name]:
            result["cpu_us_per_call"] = round((after - before) / completed[name] * 1e6, 1)
        results[name] = result
    return results


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            result = run_sync(run_group(Group.from_json(line)))
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
