"""Tracing end to end: a real proxy exports OTLP/HTTP spans to a receiver started by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llm_proxy import telemetry
from llm_proxy.telemetry.exporter import BatchingQueue
from llm_proxy.telemetry.tracing import Tracing
from tests.live import LiveProxy, running_proxy
from tests.telemetry.otlp_receiver import ReceivedSpan, Receiver, otlp_receiver

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a secret prompt"}], "temperature": 0.5,
        "max_tokens": 64}
SERVER, CLIENT, INTERNAL, ERROR = 2, 3, 1, 2


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[LiveProxy, Receiver, list[dict[str, Any]]]]:
    stops: list[dict[str, Any]] = []
    telemetry.attach("test-tracing", "llm_proxy.proxy.request.stop", lambda n, m, md, c: stops.append(dict(md)))
    try:
        with otlp_receiver() as receiver:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "proxy-under-test",
                   "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
                   "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=a%20b"}
            async with running_proxy(tmp_path, env=env) as live:
                yield live, receiver, stops
    finally:
        telemetry.detach("test-tracing")


async def flush(live: LiveProxy) -> None:
    services = live.app.services
    assert services is not None
    assert services.tracing is not None
    await services.tracing.flush()


def by_trace(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans if s.trace_id == trace_id}


class TestTracing:
    async def test_spans_carry_genai_attributes_and_the_client_s_trace(
            self, traced: tuple[LiveProxy, Receiver, list[dict[str, Any]]]) -> None:
        live, receiver, stops = traced
        _, token = await live.project_token()
        headers = {"Authorization": f"Bearer {token}", "X-Mock-Cached-Tokens": "2", "X-Mock-Reasoning-Tokens": "3",
                   "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}
        async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT, headers=headers) as resp:
            assert resp.status == 200
        await flush(live)
        spans = by_trace(receiver.wait_for(3), CLIENT_TRACE)
        server, auth, client = spans["POST /v1/chat/completions"], spans["llm_proxy.auth"], spans["chat gpt-4o-mini"]
        assert (server.kind, server.parent_span_id) == (SERVER, CLIENT_PARENT)
        assert (auth.kind, auth.parent_span_id) == (INTERNAL, server.span_id)
        assert (client.kind, client.parent_span_id) == (CLIENT, server.span_id)
        assert client.attributes | {"server.port": 0} == {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.request.stream": False, "gen_ai.request.temperature": 0.5, "gen_ai.request.max_tokens": 64,
            "gen_ai.response.model": "gpt-4o-mini", "gen_ai.response.id": client.attributes["gen_ai.response.id"],
            "gen_ai.response.finish_reasons": ["stop"], "gen_ai.usage.input_tokens": 3,
            "gen_ai.usage.output_tokens": client.attributes["gen_ai.usage.output_tokens"],
            "gen_ai.usage.cache_read.input_tokens": 2, "gen_ai.usage.reasoning.output_tokens": 3,
            "server.address": "127.0.0.1", "server.port": 0, "http.response.status_code": 200}
        assert server.attributes["llm_proxy.cost_usd"] > 0
        assert server.resource["service.name"] == "proxy-under-test"
        assert server.resource["deployment.environment"] == "test"
        assert receiver.content_types[0] == "application/x-protobuf"
        assert receiver.headers[0]["x-tenant"] == "a b"
        assert server.start <= auth.start <= auth.end <= client.start <= client.end <= server.end
        assert [s["trace_id"] for s in stops] == [CLIENT_TRACE]
        assert stops[0]["event"].trace_id == CLIENT_TRACE

    async def test_the_upstream_receives_the_client_span_as_its_parent(
            self, traced: tuple[LiveProxy, Receiver, list[dict[str, Any]]]) -> None:
        live, receiver, _ = traced
        _, token = await live.project_token()
        headers = {"Authorization": f"Bearer {token}", "X-Mock-Echo-Headers": "1", "tracestate": "vendor=1",
                   "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}
        async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT, headers=headers) as resp:
            echoed = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
        await flush(live)
        spans = receiver.wait_for(3)
        client = next(s for s in spans if s.kind == CLIENT)
        assert echoed["traceparent"] == f"00-{CLIENT_TRACE}-{client.span_id}-01"
        assert echoed["tracestate"] == "vendor=1"
        assert {s.trace_state for s in spans} == {"vendor=1"}

    async def test_an_unsampled_client_trace_exports_nothing_but_still_propagates(
            self, traced: tuple[LiveProxy, Receiver, list[dict[str, Any]]]) -> None:
        live, receiver, stops = traced
        _, token = await live.project_token()
        headers = {"Authorization": f"Bearer {token}", "X-Mock-Echo-Headers": "1",
                   "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"}
        async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT, headers=headers) as resp:
            echoed = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
        await flush(live)
        assert receiver.spans == []
        assert echoed["traceparent"].startswith(f"00-{CLIENT_TRACE}-")
        assert echoed["traceparent"].endswith("-00")
        assert stops[0]["trace_id"] == CLIENT_TRACE

    async def test_a_new_trace_starts_without_a_valid_traceparent_and_errors_are_marked(
            self, traced: tuple[LiveProxy, Receiver, list[dict[str, Any]]]) -> None:
        live, receiver, stops = traced
        headers = {"Authorization": "Bearer not-a-token", "traceparent": "00-XYZ-bad-01"}
        async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT, headers=headers) as resp:
            assert resp.status == 401
        await flush(live)
        spans = by_trace(receiver.wait_for(2), stops[0]["trace_id"])
        server, auth = spans["POST /v1/chat/completions"], spans["llm_proxy.auth"]
        assert server.parent_span_id == ""
        assert stops[0]["trace_id"] != CLIENT_TRACE
        assert (server.status_code, server.attributes["error.type"]) == (ERROR, "invalid_token")
        assert (auth.status_code, auth.attributes["error.type"]) == (ERROR, "invalid_token")
        assert "chat gpt-4o-mini" not in spans

    async def test_a_tracing_failure_turns_tracing_off_and_never_reaches_the_client(
            self, traced: tuple[LiveProxy, Receiver, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch,
            caplog: pytest.LogCaptureFixture) -> None:
        live, receiver, stops = traced
        calls: list[str] = []

        def broken(ctx: Any, *_: Any) -> Any:
            calls.append(ctx.request_id)
            raise RuntimeError("bug in tracing")

        _, token = await live.project_token()
        tracing = live.app.services.tracing if live.app.services is not None else None
        assert tracing is not None
        monkeypatch.setattr(Tracing, "_record", lambda self, ctx, *rest: broken(ctx))
        if tracing.pack_call is not None:  # records built in C (the default with the extension built)
            monkeypatch.setattr(tracing, "pack_call", broken)
        for _ in range(2):
            async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT,
                                      headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
        await flush(live)
        assert len(calls) == 1  # one failure, then the instrumentation stops calling it
        assert len(stops) == 2  # the telemetry handlers (metrics...) still see every call
        assert [r.message for r in caplog.records if "tracing failed" in r.message] == [
            f"tracing failed on request {calls[0]} and is off in this worker from now on"]
        assert receiver.spans == []

    async def test_the_metrics_count_traced_calls_dropped_before_export(
            self, traced: tuple[LiveProxy, Receiver, list[dict[str, Any]]]) -> None:
        live, receiver, _ = traced
        _, token = await live.project_token()
        services = live.app.services
        assert services is not None
        assert services.tracing is not None
        exporter = services.tracing.exporter
        assert isinstance(exporter, BatchingQueue)
        exporter.delay = 60.0  # records stay queued until the flush below

        async def call_and_scrape() -> dict[str, float]:
            async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT,
                                      headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
            async with live.http.get(f"{live.url}/metrics/prometheus") as resp:
                text = await resp.text()
            return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                    if line.startswith("llm_proxy_trace_calls_")}

        assert await call_and_scrape() == {"llm_proxy_trace_calls_queued": 1.0,
                                           "llm_proxy_trace_calls_dropped_total": 0.0}
        exporter.max_queue = 1  # one call already waits: the next one finds the queue full
        assert await call_and_scrape() == {"llm_proxy_trace_calls_queued": 1.0,
                                           "llm_proxy_trace_calls_dropped_total": 1.0}
        await flush(live)
        assert len({span.trace_id for span in receiver.spans}) == 1

    async def test_no_secret_or_content_reaches_the_spans(
            self, traced: tuple[LiveProxy, Receiver, list[dict[str, Any]]]) -> None:
        live, receiver, _ = traced
        _, token = await live.project_token()
        stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        for body in (CHAT, stream):
            async with live.http.post(f"{live.url}/v1/chat/completions", json=body,
                                      headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
        await flush(live)
        receiver.wait_for(6)
        exported = b"".join(receiver.raw)
        assert token.encode() not in exported
        assert b"sk-mock-upstream-key" not in exported
        assert b"a secret prompt" not in exported
        streamed = next(s for s in receiver.spans if s.kind == CLIENT and s.attributes["gen_ai.request.stream"])
        assert streamed.attributes["gen_ai.response.time_to_first_chunk"] >= 0
        assert streamed.attributes["gen_ai.usage.input_tokens"] == 3


class TestContentCapture:
    async def test_messages_are_on_spans_only_when_capture_is_enabled(self, tmp_path: Path) -> None:
        with otlp_receiver() as receiver:
            env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces",
                   "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
            async with running_proxy(tmp_path, env=env) as live:
                _, token = await live.project_token()
                async with live.http.post(f"{live.url}/v1/chat/completions", json=CHAT,
                                          headers={"Authorization": f"Bearer {token}"}) as resp:
                    await resp.read()
                await flush(live)
                client = next(s for s in receiver.wait_for(3) if s.kind == CLIENT)
        assert "a secret prompt" in client.attributes["gen_ai.input.messages"]
        assert "assistant" in client.attributes["gen_ai.output.messages"]
