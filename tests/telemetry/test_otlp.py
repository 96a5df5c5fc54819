"""The pieces of tracing without a proxy: trace context, samplers, OTLP encoding, export and the handlers."""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson
import pytest

from llm_proxy.context import RequestContext
from llm_proxy.settings import load_settings
from llm_proxy.telemetry import Telemetry, semconv, trace_context
from llm_proxy.telemetry.call_spans import CallEncoder, CallRecord, QueuedRecord
from llm_proxy.telemetry.exporter import MAX_RETRY_DELAY, OtlpHttpExporter, retry_delay
from llm_proxy.telemetry.otlp import AttributeFields, ExportRequest, span, span_lead, span_tail, times
from llm_proxy.telemetry.trace_context import make_sampler, parse_parent, parse_tracestate
from llm_proxy.telemetry.tracing import build_tracing
from tests.telemetry.otlp_receiver import decode, otlp_receiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SERVER, CLIENT, INTERNAL, ERROR = 2, 3, 1, 2
REQUEST = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2,
                        "max_tokens": 7, "seed": 3, "stream": False})
RESPONSE = orjson.dumps({"id": "chatcmpl-1", "model": "gpt-4o-2024", "choices": [
    {"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"cache_creation_input_tokens": 5}})


class TestTraceContext:
    @pytest.mark.parametrize("header", [
        f"00-{TRACE}-{PARENT}-01-extra",                # version 00 has exactly four fields
        f"ff-{TRACE}-{PARENT}-01",                      # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE.upper()}-{PARENT}-01", "00-XYZ-bad-01", ""])
    def test_invalid_traceparents_start_a_new_trace(self, header: str) -> None:
        assert parse_parent(header) is None

    def test_a_valid_traceparent_and_a_future_version(self) -> None:
        parent = parse_parent(f"00-{TRACE}-{PARENT}-01", "b=2, a=1")
        assert parent is not None
        assert (parent.trace_id.hex(), parent.span_id.hex(), parent.sampled) == (TRACE, PARENT, True)
        assert parent.trace_state == "b=2,a=1"
        future = parse_parent(f"01-{TRACE}-{PARENT}-00-whatever")
        assert future is not None
        assert not future.sampled

    def test_a_tracestate_with_an_invalid_member_is_dropped_whole(self) -> None:
        assert parse_tracestate("a=1,B=2") == ""
        assert parse_tracestate("a=1,a=2") == ""
        assert parse_tracestate(",".join(f"k{i}=v" for i in range(33))) == ""
        assert parse_tracestate("tenant@vendor=x") == "tenant@vendor=x"

    def test_ids_never_hold_an_all_zero_id(self, monkeypatch: pytest.MonkeyPatch) -> None:
        draws = iter([bytes(8) + b"\x01" * 16, b"\x01" * 7 + bytes(8) + b"\x01" * 9, b"\x02" * 24])
        monkeypatch.setattr(trace_context.random, "randbytes", lambda size: next(draws))
        assert trace_context.new_ids(24) == b"\x02" * 24  # zeros at an id's place, or across two: drawn again

    def test_samplers(self) -> None:
        parent = parse_parent(f"00-{TRACE}-{PARENT}-00")
        low, high = 1 << 64, (1 << 64) - 1  # the ratio sampler looks at the low 64 bits only
        low, high = low.to_bytes(16, "big"), high.to_bytes(16, "big")
        one = (1).to_bytes(16, "big")
        assert make_sampler("always_on", 1.0)(parent, high)
        assert not make_sampler("always_off", 1.0)(None, one)
        assert make_sampler("traceidratio", 0.5)(None, low)
        assert not make_sampler("traceidratio", 0.5)(None, high)
        assert not make_sampler("parentbased_always_on", 1.0)(parent, one)
        assert make_sampler("parentbased_always_off", 1.0)(parse_parent(f"00-{TRACE}-{PARENT}-01"), one)
        assert not make_sampler("parentbased_traceidratio", 0.0)(None, one)


IDS = bytes.fromhex(TRACE) + (0xA1).to_bytes(8, "big") + (0xC3).to_bytes(8, "big") + (0xB2).to_bytes(8, "big")
"""The trace id, then the server, client and auth span ids."""


def _record(status: int = 200, *, parent: str = "", trace_state: str = "", error_code: str | None = None,
            first_chunk: float | None = None) -> CallRecord:
    return CallRecord(IDS, bytes.fromhex(parent), trace_state, "POST", "/v1/chat/completions", 1_000, 9_000,
                      (2_000, 3_000, "invalid_token"), (4_000, 8_000, "openai", "gpt-4o", first_chunk), (),
                      status, "req-1", "p1", "t1", None, error_code, (10, 4, 2, 1), 0.25, first_chunk is not None,
                      REQUEST, RESPONSE, None)


def _encode(record: CallRecord, names: semconv.GenAiNames = semconv.V1_41, capture: bool = False) -> list[Any]:
    request = ExportRequest({"service.name": "svc", "n": 3}, "llm_proxy", "1.2.3")
    return decode(request([CallEncoder("https://api.example.com/v1", names, capture)(tuple(record))]))


class TestEncoding:
    def test_a_call_record_decodes_as_its_three_spans(self) -> None:
        server, auth, client = _encode(_record(parent=PARENT, trace_state="v=1"))
        assert server.resource == {"service.name": "svc", "n": 3}
        assert server.scope == ("llm_proxy", "1.2.3")
        assert (server.name, server.kind, server.trace_id, server.parent_span_id) == (
            "POST /v1/chat/completions", SERVER, TRACE, PARENT)
        assert (server.start, server.end, server.trace_state, server.flags) == (1_000, 9_000, "v=1", 0x301)
        assert (server.span_id, auth.span_id, auth.trace_id, client.trace_id) == ("00000000000000a1",
                                                                                  "00000000000000b2", TRACE, TRACE)
        assert auth.trace_state == client.trace_state == "v=1"
        assert server.attributes == {
            "http.request.method": "POST", "url.path": "/v1/chat/completions", "http.response.status_code": 200,
            "llm_proxy.request_id": "req-1", "llm_proxy.project_id": "p1", "llm_proxy.token_id": "t1",
            "llm_proxy.cost_usd": 0.25}
        assert (auth.name, auth.kind, auth.parent_span_id, auth.status_code) == (
            "llm_proxy.auth", INTERNAL, server.span_id, ERROR)
        assert (auth.attributes, auth.flags, auth.start, auth.end) == ({"error.type": "invalid_token"}, 0x101,
                                                                       2_000, 3_000)
        assert (client.name, client.kind, client.parent_span_id, client.span_id) == (
            "chat gpt-4o", CLIENT, server.span_id, "00000000000000c3")
        assert client.attributes == {
            "server.address": "api.example.com", "server.port": 443, "gen_ai.provider.name": "openai",
            "gen_ai.request.stream": False, "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
            "http.response.status_code": 200, "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 4,
            "gen_ai.usage.cache_read.input_tokens": 2, "gen_ai.usage.reasoning.output_tokens": 1,
            "gen_ai.request.temperature": 0.2, "gen_ai.request.max_tokens": 7, "gen_ai.request.seed": 3,
            "gen_ai.response.id": "chatcmpl-1", "gen_ai.response.model": "gpt-4o-2024",
            "gen_ai.response.finish_reasons": ["stop"], "gen_ai.usage.cache_creation.input_tokens": 5}

    def test_errors_newer_names_and_captured_content(self) -> None:
        server, _, client = _encode(_record(502, error_code="upstream_unreachable"), semconv.LATEST, capture=True)
        assert (server.status_code, server.attributes["error.type"]) == (ERROR, "upstream_unreachable")
        assert (client.status_code, client.attributes["error.type"]) == (ERROR, "502")
        assert client.attributes["gen_ai.usage.cache_write.input_tokens"] == 5
        assert "gen_ai.usage.cache_creation.input_tokens" not in client.attributes
        assert orjson.loads(client.attributes["gen_ai.input.messages"]) == [{"role": "user", "content": "hi"}]
        assert "hello" in client.attributes["gen_ai.output.messages"]

    def test_a_stream_in_a_new_trace(self) -> None:
        server, auth, client = _encode(_record(first_chunk=0.125))
        assert (server.parent_span_id, server.flags, server.trace_state) == ("", 0x101, "")
        assert (auth.parent_span_id, client.parent_span_id) == (server.span_id, server.span_id)
        assert client.attributes["gen_ai.response.time_to_first_chunk"] == 0.125
        assert client.attributes["gen_ai.request.stream"] is True

    def test_attributes_read_early_from_large_bodies_are_used(self) -> None:
        _, _, client = _encode(_record()._replace(request_body=b"", response_body=b"",
                                                   body_attributes={"gen_ai.request.seed": 9}))
        assert client.attributes["gen_ai.request.seed"] == 9
        assert "gen_ai.response.id" not in client.attributes

    def test_cached_attributes_keep_true_and_one_apart(self) -> None:
        field = AttributeFields().field
        parts = [field("b", True), field("i", 1), field("b", 1), field("i", True), field("none", None)]
        encoded = span(span_lead(b"\x01" * 16), b"\x02" * 8, times(1, 2), *parts, span_tail(False, False))
        (decoded,) = decode(ExportRequest({}, "s", "v")([encoded]))
        assert decoded.attributes == {"b": 1, "i": True}  # the later value of each key wins when decoded
        assert [type(v) for v in (field("b", True), field("b", 1))] == [bytes, bytes]
        assert field("b", True) != field("b", 1)


async def test_retryable_answers_are_retried_and_others_drop_the_batch() -> None:
    with otlp_receiver() as receiver:
        exporter: OtlpHttpExporter[QueuedRecord] = OtlpHttpExporter(
            receiver.url + "/v1/traces", {"x-key": "k"}, 5.0, ExportRequest({}, "s", "v"),
            CallEncoder("http://u", semconv.V1_41, False))
        try:
            receiver.replies = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
            exporter.submit(tuple(_record()))
            await exporter.flush()
            assert (receiver.posts, exporter.exported, len(receiver.spans)) == (3, 1, 3)
            assert receiver.headers[0]["x-key"] == "k"
            receiver.replies = [(400, {})]
            exporter.submit(tuple(_record()))
            await exporter.flush()
            assert (receiver.posts, exporter.failed, len(receiver.spans)) == (4, 1, 3)
        finally:
            await exporter.aclose()


async def test_a_full_queue_drops_and_closing_sends_what_is_queued() -> None:
    with otlp_receiver() as receiver:
        exporter: OtlpHttpExporter[QueuedRecord] = OtlpHttpExporter(
            receiver.url + "/v1/traces", {}, 5.0, ExportRequest({}, "s", "v"),
            CallEncoder("http://u", semconv.V1_41, False), max_queue=2, delay=60.0)
        for _ in range(3):
            exporter.submit(tuple(_record()))
        await exporter.aclose()
        exporter.submit(tuple(_record()))
        assert (exporter.dropped, exporter.exported, len(receiver.spans)) == (2, 2, 6)


def test_retry_delay_honours_retry_after_within_bounds() -> None:
    assert retry_delay("2", 0) == 2.0
    assert retry_delay("3600", 0) == MAX_RETRY_DELAY
    assert 0.0 <= retry_delay(format_datetime(datetime.now(UTC)), 0) <= 1.0
    assert 0.4 <= retry_delay(None, 0) <= 0.6
    assert 3.2 <= retry_delay("soon", 3) <= 4.8


class _Memory:
    loop = None

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def submit(self, record: QueuedRecord) -> None:
        self.records.append(CallRecord._make(record))

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _traced(sampler: str = "parentbased_always_on") -> tuple[Telemetry, Any, _Memory]:
    settings = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_SAMPLER": sampler},
                             require_management_token=False)
    memory = _Memory()
    tracing = build_tracing(settings.tracing, "http://127.0.0.1:1", exporter=memory)
    assert tracing is not None
    telemetry = Telemetry()
    tracing.attach(telemetry)
    return telemetry, tracing, memory


def _call(telemetry: Telemetry, tracing: Any, headers: list[tuple[bytes, bytes]],
          fail_auth: bool = False) -> tuple[RequestContext, list[tuple[str, str]]]:
    ctx = RequestContext(started_at=datetime.now(UTC), started=time.monotonic(), provider="openai", model="m")
    tracing.start({"method": "POST", "path": "/v1/chat/completions", "headers": headers}, ctx)
    ctx.auth_started = time.monotonic()
    ctx.auth_finished = ctx.auth_started + 1e-3
    propagated = []
    if fail_auth:
        ctx.error_code = "invalid_token"
    else:
        ctx.token_id = "t"
        with telemetry.span("llm_proxy.cache.lookup", {"context": ctx}) as metadata:
            metadata["cache_status"] = "miss"
        propagated = tracing.propagation_headers(ctx)
        ctx.upstream_started = time.monotonic()
        ctx.upstream_finished = time.monotonic()
    tracing.end(ctx, {"time_to_first_byte": None, "cost_usd": None}, {
        "method": "POST", "path": "/v1/chat/completions", "status": 401 if fail_auth else 200, "request_id": "r",
        "project_id": None, "token_id": None, "cache_status": None,
        "error_code": "invalid_token" if fail_auth else None, "usage_known": False, "stream": False,
        "response_body": b"{}", "context": ctx})
    return ctx, propagated


def test_the_handlers_record_one_call_and_propagate_its_client_span() -> None:
    telemetry, tracing, memory = _traced()
    ctx, propagated = _call(telemetry, tracing, [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
                                                 (b"tracestate", b"a=1"), (b"tracestate", b"b=2")])
    (record,) = memory.records
    assert record.upstream is not None
    client_start, client_end, provider, model, first_chunk = record.upstream
    assert propagated == [("traceparent", f"00-{TRACE}-{record.ids[24:32].hex()}-01"), ("tracestate", "a=1,b=2")]
    assert (ctx.trace_id, record.ids[:16].hex(), record.parent_id.hex()) == (TRACE, TRACE, PARENT)
    assert len({record.ids[16:24], record.ids[24:32], record.ids[32:40]}) == 3
    assert (provider, model, first_chunk) == ("openai", "m", None)
    assert record.auth is not None
    auth_start, auth_end, error = record.auth
    assert error is None
    assert auth_end - auth_start == pytest.approx(1_000_000, abs=1_000)
    ((name, _, lookup_start, lookup_end, lookup_error, attributes),) = record.children
    assert (name, lookup_error, attributes) == ("llm_proxy.cache.lookup", None, (("llm_proxy.cache_status", "miss"),))
    assert record.start <= auth_start <= lookup_start <= lookup_end <= client_start <= client_end <= record.end
    for _ in range(4):  # queued records should cost the collector little: their parts are soon untracked
        gc.collect()  # (a tuple is untracked once its items are: each level of nesting takes one more pass)
    assert not any(gc.is_tracked(part) for part in (record.children, record.auth, record.upstream))


def test_unsampled_calls_record_nothing_but_propagate() -> None:
    telemetry, tracing, memory = _traced()
    ctx, propagated = _call(telemetry, tracing, [(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode())])
    assert memory.records == []
    assert propagated[0][1].startswith(f"00-{TRACE}-")
    assert propagated[0][1].endswith("-00")
    telemetry, tracing, memory = _traced("always_off")
    ctx, _ = _call(telemetry, tracing, [])
    assert memory.records == []
    assert ctx.trace_id is not None
    assert len(ctx.trace_id) == 32


def test_a_failed_token_check_is_an_error_child_and_no_client_span() -> None:
    telemetry, tracing, memory = _traced()
    _call(telemetry, tracing, [], fail_auth=True)
    (record,) = memory.records
    assert record.upstream is None
    assert record.auth is not None
    assert record.auth[2] == "invalid_token"
    assert record.parent_id == b""


async def test_shutdown_from_another_thread_flushes_on_the_loop() -> None:
    with otlp_receiver() as receiver:
        settings = load_settings({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces"},
                                 require_management_token=False)
        tracing = build_tracing(settings.tracing, "http://127.0.0.1:1")
        assert tracing is not None
        tracing.exporter.submit(tuple(_record()))
        await asyncio.to_thread(tracing.shutdown)
        assert len(receiver.spans) == 3
        assert receiver.spans[0].resource["service.name"] == "llm-proxy"
