"""Records on the exporter pipe (`_records.c`): `pack_call` builds `Tracing._record`'s record, `unpack` reads it back.

`Tracing._record` is the reference; the C builder must give the same record, value for value and
type for type, for any call (bodies the exporter reads, or too large to leave to it).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_proxy.context import RequestContext
from llm_proxy.settings import load_settings
from llm_proxy.telemetry import semconv
from llm_proxy.telemetry import tracing as tracing_module
from llm_proxy.telemetry.call_spans import MAX_DEFERRED_BODY, NATIVE
from llm_proxy.telemetry.trace_context import make_sampler
from llm_proxy.telemetry.tracing import Tracing
from tests.services import skip_or_fail
from tests.telemetry.test_otlp import _Memory


class _Discard:
    loop = None
    dropped = 0

    def submit(self, record: Any) -> None: ...

    def queued(self) -> int:
        return 0


@pytest.fixture(scope="module")
def native() -> Any:
    if NATIVE is None:
        skip_or_fail("the C extension was not built (pip install -e . builds it; gcc and Python headers needed)")
    return NATIVE


def _tracing() -> Tracing:
    return Tracing(_Discard(), make_sampler("always_on", 1.0), names=semconv.V1_41, capture_content=False,
                   defer_bodies=True, pack_call=NATIVE.pack_call if NATIVE is not None else None)


plain = st.none() | st.booleans() | st.integers(-(2 ** 80), 2 ** 80) | st.floats(allow_nan=False) | st.text(max_size=6)
values = st.recursive(plain | st.binary(max_size=6),
                      lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
                      | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=3), max_leaves=10)


@given(value=values)
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_values_come_back_as_they_were_packed(native: Any, value: Any) -> None:
    assert native.unpack(native.pack(value) + native.pack(value)) == [value, value]
    assert [type(v) for v in native.unpack(native.pack(value))] == [type(value)]


def test_what_the_pipe_does_not_carry_is_refused(native: Any) -> None:
    assert native.unpack(native.pack(bytearray(b"ab"))) == [b"ab"]  # as marshal does
    for value in (object(), {1.5j}, [set()]):
        with pytest.raises(TypeError):
            native.pack(value)
    nested: list[Any] = []
    for _ in range(40):
        nested = [nested]
    with pytest.raises(ValueError, match="nested"):
        native.pack(nested)


@given(data=st.binary(max_size=40))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_damaged_input_raises_value_error(native: Any, data: bytes) -> None:
    with contextlib.suppress(ValueError):  # random bytes may happen to be valid records
        native.unpack(data)
    for cut in range(1, 12):
        packed = native.pack(("text", 1, 2.5, [b"x"], {"k": None}))
        with pytest.raises(ValueError, match="truncated"):
            native.unpack(packed[:-cut])


maybe_time = st.none() | st.floats(0, 2_000)
bodies = st.sampled_from([b"", b"{}", b'{"model": "m"}', bytearray(b"[1]"), b"x" * (MAX_DEFERRED_BODY + 1)])
texts = st.none() | st.sampled_from(["", "a", "é", "invalid_token"])


@st.composite
def calls(draw: st.DrawFn) -> tuple[RequestContext, Any, dict[str, Any], dict[str, Any], int, float]:
    ctx = RequestContext(started_at=None, started=draw(st.floats(0, 1_000)))  # type: ignore[arg-type]
    ctx.auth_started, ctx.auth_finished = draw(maybe_time), draw(maybe_time)
    ctx.upstream_started, ctx.upstream_finished = draw(maybe_time), draw(maybe_time)
    ctx.token_id, ctx.error_code = draw(texts), draw(texts)
    ctx.provider, ctx.model = draw(st.sampled_from(["openai", "azure"])), draw(texts)
    ctx.request_body = draw(bodies)
    children = draw(st.lists(st.tuples(st.just("llm_proxy.cache.lookup"), st.binary(min_size=8, max_size=8),
                                       st.integers(0, 2 ** 62), st.integers(0, 2 ** 62), texts,
                                       st.just((("llm_proxy.result", "miss"),))), max_size=2))
    trace = (bytes(range(1, 41)), draw(st.sampled_from([b"", b"\x07" * 8])), draw(st.sampled_from(["", "a=1"])),
             True, children)
    m = {"time_to_first_byte": draw(maybe_time), "input_tokens": draw(st.integers(0, 10 ** 6)),
         "output_tokens": draw(st.integers(0, 10 ** 6)), "cached_tokens": 0,
         "reasoning_tokens": draw(st.integers(0, 9)), "cost_usd": draw(st.none() | st.floats(0, 10))}
    md = {"stream": draw(st.booleans()), "usage_known": draw(st.booleans()), "method": "POST",
          "path": draw(st.sampled_from(["/v1/chat/completions", "/v1/embeddings"])),
          "status": draw(st.sampled_from([200, 401, 502])), "request_id": "req-1", "project_id": draw(texts),
          "token_id": draw(texts), "cache_status": draw(texts), "error_code": draw(texts)}
    if draw(st.booleans()):
        md["response_body"] = draw(bodies)
    return ctx, trace, m, md, draw(st.integers(10 ** 18, 2 * 10 ** 18)), draw(st.floats(1_000, 3_000))


@given(call=calls())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_call_packed_in_c_is_the_record_python_builds(native: Any, call: Any) -> None:
    ctx, trace, m, md, end, now = call
    tracing = _tracing()
    record = tracing._record(ctx, trace, m, md, end, now)
    packed = native.pack_call(ctx, trace, m, md, end, now, MAX_DEFERRED_BODY)
    if packed is None:  # left to `_record`, which reads a large body now
        assert record[19] == record[20] == b""
        assert ctx.upstream_started is not None
        assert max(len(ctx.request_body), len(md.get("response_body", b""))) > MAX_DEFERRED_BODY
        return
    (unpacked,) = native.unpack(packed)
    assert unpacked == record
    assert [type(v) for v in unpacked] == [bytes if type(v) is bytearray else type(v) for v in record]


def test_missing_event_values_raise_as_in_python(native: Any) -> None:
    ctx = RequestContext(started_at=None, started=1.0)  # type: ignore[arg-type]
    ctx.upstream_started = 1.5
    trace = (bytes(40), b"", "", True, [])
    with pytest.raises(KeyError):
        native.pack_call(ctx, trace, {}, {"stream": False}, 10 ** 18, 2.0, MAX_DEFERRED_BODY)
    with pytest.raises(TypeError):
        native.pack_call(ctx, (1, 2), {}, {}, 10 ** 18, 2.0, MAX_DEFERRED_BODY)


def test_tracing_says_so_when_the_extension_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, require_management_token=False)
    monkeypatch.setattr(tracing_module, "NATIVE", None)
    tracing = tracing_module.build_tracing(settings.tracing, "https://api.example.com", exporter=_Memory())
    assert tracing is not None
    assert tracing.pack_call is None  # the Python record path
    assert "the C extension (llm_proxy.telemetry._spans) is not built" in caplog.text
    caplog.clear()
    off = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                         "LLM_PROXY_TRACE_NATIVE_ENCODER": "false"}, require_management_token=False)
    tracing_module.build_tracing(off.tracing, "https://api.example.com", exporter=_Memory())
    assert "not built" not in caplog.text
