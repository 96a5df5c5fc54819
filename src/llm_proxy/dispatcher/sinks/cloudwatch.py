"""CloudWatchSink: records as JSON log events through `PutLogEvents` (boto3, called in a thread).

PutLogEvents rules enforced here (moto does not enforce them, AWS does): events sorted by
timestamp; at most 10,000 events and 1,048,576 bytes (UTF-8 message + 26 bytes each) per call;
one call spans less than 24 hours. A message is capped at `MAX_MESSAGE_BYTES` (the older 256 KiB
limit, to be safe): the decoded bodies are dropped first, then the text is cut.

The log group and stream are created when missing (at start and on `ResourceNotFoundException`,
then the call is retried once). Events CloudWatch refuses one by one (too old, too new, expired:
`rejectedLogEventsInfo`) are reported as rejected, so they reach the dead-letter stream.
boto3 retries throttling and 5xx itself (standard mode); what still fails is retryable here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any, Self

import orjson

from llm_proxy.dispatcher.record import SinkRecord, record_document
from llm_proxy.dispatcher.sinks import RecordError, SinkPartialError, SinkRejectedError, SinkRetryableError
from llm_proxy.settings import Settings

MAX_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_SPAN_MS = 24 * 3600 * 1000
MAX_MESSAGE_BYTES = 256 * 1024 - EVENT_OVERHEAD
PERMANENT_CODES = frozenset({"InvalidParameterException", "AccessDeniedException", "UnrecognizedClientException",
                             "InvalidSignatureException", "ValidationException"})

Entry = tuple[int, int, str]
"""(timestamp in ms, index of the record in the batch, message)."""


class CloudWatchSink:
    def __init__(self, log_group: str, log_stream: str, *, region: str = "us-east-1", endpoint: str = "",
                 timeout: float = 30.0, client: Any = None) -> None:
        self.log_group = log_group
        self.log_stream = log_stream
        self.region = region
        self.endpoint = endpoint
        self.timeout = timeout
        self._client = client
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        section = settings.cloudwatch
        return cls(section.log_group, section.log_stream or f"dispatcher-{socket.gethostname()}",
                   region=section.region, endpoint=section.endpoint or settings.dispatcher.endpoint,
                   timeout=settings.dispatcher.send_timeout)

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=self.timeout,
                        read_timeout=self.timeout)
        return boto3.session.Session().client("logs", region_name=self.region,
                                              endpoint_url=self.endpoint or None, config=config)

    async def send(self, records: Sequence[SinkRecord]) -> None:
        if not records:
            return
        entries = sorted((record_time(r), i, message(r)) for i, r in enumerate(records))
        failures: dict[int, RecordError] = {}
        batches = split_batches(entries)
        for number, batch in enumerate(batches):
            try:
                reply = await asyncio.to_thread(self._put, batch)
            except SinkRetryableError as exc:  # the service is unreachable: the rest fails alike
                failures.update({i: exc for later in batches[number:] for _, i, _ in later})
                break
            except SinkRejectedError as exc:
                failures.update({i: exc for _, i, _ in batch})
                continue
            failures.update(rejected_events(batch, reply.get("rejectedLogEventsInfo") or {}))
        if failures:
            raise SinkPartialError(failures)

    def _put(self, batch: list[Entry]) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            self._client = self._make_client()
        events = [{"timestamp": stamp, "message": text} for stamp, _, text in batch]
        try:
            if not self._ready:
                self._create()
            try:
                return self._put_events(events)
            except ClientError as exc:
                if _code(exc) != "ResourceNotFoundException":
                    raise
                self._create()
                return self._put_events(events)
        except ClientError as exc:
            error = f"cloudwatch: {_code(exc)}: {exc}"
            if _code(exc) in PERMANENT_CODES:
                raise SinkRejectedError(error) from exc
            raise SinkRetryableError(error) from exc
        except BotoCoreError as exc:
            raise SinkRetryableError(f"cloudwatch: {type(exc).__name__}: {exc}") from exc

    def _put_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        reply: dict[str, Any] = self._client.put_log_events(
            logGroupName=self.log_group, logStreamName=self.log_stream, logEvents=events)
        return reply

    def _create(self) -> None:
        from botocore.exceptions import ClientError

        for create, kwargs in ((self._client.create_log_group, {"logGroupName": self.log_group}),
                               (self._client.create_log_stream, {"logGroupName": self.log_group,
                                                                 "logStreamName": self.log_stream})):
            try:
                create(**kwargs)
            except ClientError as exc:
                if _code(exc) != "ResourceAlreadyExistsException":
                    raise
        self._ready = True

    async def aclose(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def record_time(record: SinkRecord) -> int:
    return int(record.event.started_at.timestamp() * 1000)


def message(record: SinkRecord) -> str:
    """The record as JSON without the raw bodies, cut to fit one log event."""
    document = record_document(record, raw_bodies=False)
    text = orjson.dumps(document)
    if len(text) > MAX_MESSAGE_BYTES:
        document["request"] = document["response"] = f"<omitted: the event exceeded {MAX_MESSAGE_BYTES} bytes>"
        document["truncated"] = True
        text = orjson.dumps(document)
    return text[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")


def split_batches(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Sorted entries → PutLogEvents calls within the count, byte and 24-hour limits."""
    batches: list[list[Entry]] = []
    current: list[Entry] = []
    size = 0
    for entry in entries:
        cost = len(entry[2].encode()) + EVENT_OVERHEAD
        if current and (len(current) >= MAX_EVENTS or size + cost > MAX_BATCH_BYTES
                        or entry[0] - current[0][0] >= MAX_SPAN_MS):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += cost
    if current:
        batches.append(current)
    return batches


def rejected_events(batch: list[Entry], info: dict[str, int]) -> dict[int, RecordError]:
    """CloudWatch's per-event refusals: indexes at the batch's start (too old) or end (too new)."""
    failures: dict[int, RecordError] = {}
    too_new = info.get("tooNewLogEventStartIndex")
    for key, reason in (("tooOldLogEventEndIndex", "older than 14 days or the group's retention"),
                        ("expiredLogEventEndIndex", "older than the group's retention")):
        end = info.get(key)
        if end is not None:
            failures.update({batch[n][1]: SinkRejectedError(f"cloudwatch rejected the event: {reason}")
                             for n in range(min(end + 1, len(batch)))})
    if too_new is not None:
        failures.update({batch[n][1]: SinkRejectedError("cloudwatch rejected the event: more than 2 h in the future")
                         for n in range(too_new, len(batch))})
    return failures
