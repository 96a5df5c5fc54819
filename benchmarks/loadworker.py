"""The load generator process: runs one group of cells per JSON line read on stdin.

It lives in its own process so that it never shares an event loop (or a GIL) with anything
measured. A group is every target at one concurrency and request shape. Each target gets its
own warm keep-alive session; the measured time is cut into slices taken in turn (A B C, C B A,
A B C, ...), so a burst of machine noise lands on all targets alike. Each slice starts with a
short unmeasured lead-in that refills the connections.

Input line: a `Group` as JSON; output line: {target name: Summary.to_dict()}.
"""

from __future__ import annotations

import json
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
    order = list(specs)
    async with AsyncExitStack() as stack:
        sessions: dict[str, aiohttp.ClientSession] = {}
        for name, spec in specs.items():
            sessions[name] = await stack.enter_async_context(open_session(spec, group.concurrency))
            await run_for(spec, group.concurrency, 0.0, group.warmup, sessions[name])
        for i in range(group.slices):
            for name in order if i % 2 == 0 else reversed(order):
                run = await run_for(specs[name], group.concurrency, group.duration / group.slices,
                                    LEAD_IN, sessions[name])
                samples[name] += run.samples
    return {name: summarize(Run(samples[name], group.duration, group.concurrency)).to_dict()
            for name in order}


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            result = run_sync(run_group(Group.from_json(line)))
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
