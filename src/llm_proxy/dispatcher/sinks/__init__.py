"""Sinks: where the dispatcher delivers records. One module per service, named in `SINKS`.

    file        sinks/file.py        JSON Lines, fsync per batch, size-based rotation
    lunary      sinks/lunary.py      POST /v1/runs/ingest, start + end/error run events per call
    helicone    sinks/helicone.py    one manual-logger record per call (/oai/v1/log, /custom/v1/log)
    cloudwatch  sinks/cloudwatch.py  PutLogEvents (boto3 in a thread; imported only when chosen)

Adding a sink is one module with a class that has `from_settings(settings)` and satisfies `Sink`,
plus one entry here. Retrying, splitting, dead-lettering and acknowledging are the dispatcher's
business (`dispatcher/delivery.py`, `dispatcher/service.py`), not the sink's.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.errors import ConfigError
from llm_proxy.settings import Settings

SINKS: dict[str, str] = {
    "file": "llm_proxy.dispatcher.sinks.file:FileSink",
    "lunary": "llm_proxy.dispatcher.sinks.lunary:LunarySink",
    "helicone": "llm_proxy.dispatcher.sinks.helicone:HeliconeSink",
    "cloudwatch": "llm_proxy.dispatcher.sinks.cloudwatch:CloudWatchSink",
}


@runtime_checkable
class Sink(Protocol):
    """Turns records into one service's format and sends them.

    `send(records)` returns normally when the service confirmed every record. Otherwise it
    raises a `SinkError`: `SinkRetryableError` (try again later: outage, 5xx, 429 with its
    `retry_after`), `SinkRejectedError` (never retry: the service refused the data),
    `SinkTooLargeError` (the call was too big: send fewer records at a time), or
    `SinkPartialError` mapping the index of each failed record to one of those; the records
    it does not name were confirmed. A record may be sent again after any error, so sinks key
    what they send by `record.id` (the event id) where the service can deduplicate.
    `aclose()` releases connections and files; `send` is not called after it.
    """

    async def send(self, records: Sequence[SinkRecord]) -> None: ...

    async def aclose(self) -> None: ...


class SinkFactory(Protocol):
    def from_settings(self, settings: Settings) -> Sink: ...


class SinkError(Exception):
    """A sink could not deliver (some of) its records."""


class SinkRetryableError(SinkError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkRejectedError(SinkError):
    """The service refused the records for good (validation, auth, unknown route)."""


class SinkTooLargeError(SinkError):
    """The request was too large; fewer records per call may pass."""


RecordError = SinkRetryableError | SinkRejectedError | SinkTooLargeError


class SinkPartialError(SinkError):
    """Some records failed: `failures` maps their index in the batch to their own error."""

    def __init__(self, failures: Mapping[int, RecordError]) -> None:
        self.failures = dict(failures)
        sample = next(iter(self.failures.values()), None)
        super().__init__(f"{len(self.failures)} records failed" + (f", e.g. {sample}" if sample else ""))


def per_record(error: SinkError, count: int) -> dict[int, RecordError]:
    """Each record's error: a whole-batch error applies to every one of the `count` records."""
    if isinstance(error, SinkPartialError):
        return dict(error.failures)
    if isinstance(error, SinkRetryableError | SinkRejectedError | SinkTooLargeError):
        return dict.fromkeys(range(count), error)
    return dict.fromkeys(range(count), SinkRetryableError(str(error)))


def sink_class(name: str) -> Any:
    if name not in SINKS:
        raise ConfigError([f"DISPATCHER_SERVICE: unknown sink {name!r}; valid: {', '.join(SINKS)}"])
    module_name, _, attr = SINKS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_sink(name: str, settings: Settings) -> Sink:
    """The sink called `name`, configured from `settings`; ConfigError when it cannot be."""
    factory: SinkFactory = sink_class(name)
    return factory.from_settings(settings)
