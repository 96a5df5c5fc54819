"""Send events that are not on the stream (a file log, dead letters) straight to a sink."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.sinks import Sink, SinkError, SinkPartialError, per_record
from llm_proxy.events import Event, EventDecodeError, decode_event


@dataclass
class ReplayReport:
    sent: list[str] = field(default_factory=list)
    """Event ids the sink confirmed."""
    failed: dict[str, str] = field(default_factory=dict)
    """Event id → why it was not delivered."""
    unreadable: list[str] = field(default_factory=list)
    """Where input could not be decoded as an event (`file:line`, or a dead-letter id)."""


async def replay(events: Iterable[Event], sink: Sink, transform: Callable[[Event], SinkRecord],
                 batch_size: int) -> ReplayReport:
    """Transform and send `events` in batches through `sink` (give it the delivery wrappers)."""
    report = ReplayReport()
    iterator = iter(events)
    while chunk := list(islice(iterator, batch_size)):
        records: list[SinkRecord] = []
        for event in chunk:
            try:
                records.append(transform(event))
            except Exception as exc:  # reported, like a sink failure, never silently skipped
                report.failed[event.event_id] = f"transform failed: {type(exc).__name__}: {exc}"
        try:
            await sink.send(records)
            failures = {}
        except SinkError as exc:
            failures = exc.failures if isinstance(exc, SinkPartialError) else per_record(exc, len(records))
        for index, record in enumerate(records):
            if index in failures:
                report.failed[record.id] = f"{type(failures[index]).__name__}: {failures[index]}"
            else:
                report.sent.append(record.id)
    return report


def events_from_file(path: Path, unreadable: list[str]) -> Iterator[Event]:
    """Events of a JSON-lines file (FILE_EVENT_LOG or a file sink's output); bad lines are noted."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield decode_event(line)
            except EventDecodeError:
                unreadable.append(f"{path}:{number}")
