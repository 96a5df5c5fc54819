"""The C span encoder (`_spans.c`, `_bodies.c`) writes exactly the bytes of the pure-Python `CallEncoder`.

The Python encoder is the reference (decoded with opentelemetry-proto in test_otlp.py); here the
two are run side by side on hand-picked and generated records, bodies valid and not.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_proxy.telemetry import semconv
from llm_proxy.telemetry.call_spans import CallEncoder, call_encoder
from tests.services import skip_or_fail
from tests.telemetry.test_otlp import IDS, REQUEST, RESPONSE, _record

URL = "https://api.example.com:8443/v1"

try:
    from llm_proxy.telemetry import _spans
except ImportError:  # pragma: no cover - depends on the build
    _spans = None


@pytest.fixture(scope="module")
def encoders() -> tuple[Any, CallEncoder]:
    if _spans is None:
        skip_or_fail("the C span encoder was not built (pip install -e . builds it; gcc and Python headers needed)")
    native = call_encoder(URL, semconv.V1_41, False)
    assert isinstance(native, _spans.Encoder)
    return native, CallEncoder(URL, semconv.V1_41, False)


def same(encoders: tuple[Any, CallEncoder], record: tuple[Any, ...]) -> bytes:
    native, python = encoders
    try:
        expected = python(record)
    except Exception as exc:  # the C encoder must refuse what the Python one refuses
        with pytest.raises(type(exc)):
            native(record)
        return b""
    assert native(record) == expected
    return expected


BODIES = [
    b"", b"{}", b"[]", b"[{}]", b" {}", b"null", b"{", b"{]", REQUEST, RESPONSE,
    b'{"temperature": 0.5, "temperature": "hot"}',          # a repeated key: the last value counts
    b'{"max_tokens": 5, "max_completion_tokens": 7}',       # two keys, one attribute
    b'{"max_tokens": 5, "max_completion_tokens": "x"}',
    b'{"temp\\u0065rature": 0.5}',                          # an escaped key that is a parameter
    b'{"seed": 123456789012345678901234}',                  # orjson makes this a float
    b'{"seed": 1234567890123456789, "top_p": 1e-5, "temperature": -0.0, "max_tokens": -0}',
    b'{"seed": 1e400}', b'{"seed": 1E+2}', b'{"seed": 01}', b'{"seed": 1.}', b'{"seed": -}', b'{"seed": .5}',
    b'{"temperature": true, "top_p": null, "seed": [1]}',
    b'{"a": "\\ud83d\\ude00", "seed": 1}', b'{"a": "\\ud800", "seed": 1}', b'{"a": "\\udc00", "seed": 1}',
    b'{"a": "\xed\xa0\x80", "seed": 1}', b'{"a": "\xc0\xaf", "seed": 1}', b'{"a": "\xf4\x90\x80\x80", "seed": 1}',
    b'{"a": "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "seed": 2}', b'{"a": "\x01"}', b'{"a": "\x7f", "seed": 3}',
    b'{"seed": 1]', b'{"a": 1 "seed": 1}', b'{"a": [1 2], "seed": 1}', b'{"a": {"b": 1 "c": 2}, "seed": 1}',
    b'{"a": [1, 2} , "seed": 1}',
    b'{"a": "\\x"}', b'{"a": "\\u12"}', b'{"a": [1,], "seed": 1}', b'{"a": 1,}', b'{"seed": 4} x', b'{"seed": 4}\n\t ',
    b"\xef\xbb\xbf{}", b'{"a": ' + b"[" * 1030 + b"]" * 1030 + b', "seed": 1}',
    b'{"a": ' + b"[" * 999 + b"]" * 999 + b', "seed": 1}',
    b'{"id": "r\\u00e9sp", "model": "m\\"x", "choices": [{"finish_reason": "stop"}, 3, {"finish_reason": 1},'
    b' {"finish_reason": "length", "finish_reason": "stop"}], "usage": {"cache_creation_input_tokens": true}}',
    b'{"id": 5, "model": null, "choices": {"finish_reason": "stop"}, "usage": [1]}',
    b'{"id": "a", "id": "b", "usage": {"cache_creation_input_tokens": 2.0}}',
    b'{"choices": [{"fin\\u0069sh_reason": "stop"}]}',
    b'{"usage": {"cache_creation_input_tokens": 99999999999999999999}}',
    b'{"choices": [' + b'{"finish_reason": "stop"},' * 70 + b'{}]}',
]


def test_hand_picked_records_encode_alike(encoders: tuple[Any, CallEncoder]) -> None:
    records = [_record(), _record(502, error_code="upstream_unreachable"), _record(404),
               _record(parent="00f067aa0ba902b7", trace_state="v=1,w=2"), _record(first_chunk=0.125),
               _record(first_chunk=-1.0), _record(first_chunk=math.nan),
               _record()._replace(request_body=b"", response_body=b"", body_attributes={"gen_ai.request.seed": 9}),
               _record()._replace(upstream=None, auth=None, usage=None, cost_usd=None, project_id=None),
               _record()._replace(children=(("llm_proxy.cache.lookup", b"\x05" * 8, 10, 20, "timeout",
                                             (("llm_proxy.result", "miss"), ("llm_proxy.status", 3))),)),
               _record()._replace(upstream=(1, 2, "azure", "", None), path="/v1/embeddings"),
               _record()._replace(upstream=(1, 2, "bedrock", " gpt-4o\u3000", None)),
               _record()._replace(upstream=(1, 2, "openai", None, None), path="/v1/models", method="GET")]
    for record in records:
        assert same(encoders, tuple(record))
    for request in BODIES:
        for response in (b"", RESPONSE, request):
            assert same(encoders, tuple(_record()._replace(request_body=request, response_body=response)))


def test_early_attributes_are_merged_under_those_read_later(encoders: tuple[Any, CallEncoder]) -> None:
    early = {"gen_ai.response.id": None, "gen_ai.request.seed": 1, "x.list": [1, "a", 2.5, True],
             "x.none": None, "gen_ai.output.messages": "[]"}
    encoded = same(encoders, tuple(_record()._replace(body_attributes=early)))
    assert b"chatcmpl-1" in encoded and b"x.list" in encoded
    alone = same(encoders, tuple(_record()._replace(body_attributes=early, request_body=b"", response_body=b"")))
    assert b"None" in alone  # attributes that are never cached write None as "None", as otlp.attribute does


def test_the_encoder_refuses_malformed_records_with_an_exception(encoders: tuple[Any, CallEncoder]) -> None:
    native, _ = encoders
    good = tuple(_record())
    for bad in [good[:5], (b"short", *good[1:]), (*good[:7], (1, 2), *good[8:]), (*good[:16], (1, 2), *good[17:]),
                (*good[:5], -1, *good[6:]), (*good[:19], "text", *good[20:])]:
        with pytest.raises((TypeError, ValueError, OverflowError)):
            native(bad)
    with pytest.raises(TypeError):
        native()  # type: ignore[call-arg]


def test_the_factory_keeps_the_python_encoder_for_captured_content_or_when_told() -> None:
    assert isinstance(call_encoder(URL, semconv.V1_41, True), CallEncoder)
    assert isinstance(call_encoder(URL, semconv.V1_41, False, native=False), CallEncoder)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
keys = st.sampled_from(["model", "messages", "temperature", "max_tokens", "max_completion_tokens", "seed", "top_p",
                        "id", "choices", "usage", "stream", "x"])
finish = st.fixed_dictionaries({}, optional={"finish_reason": st.text(max_size=6) | st.integers(),
                                            "index": json_values})
documents = st.dictionaries(keys, json_values | st.lists(finish, max_size=3)
                            | st.fixed_dictionaries({}, optional={"cache_creation_input_tokens": json_values}),
                            max_size=6)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    body = json.dumps(draw(documents), ensure_ascii=draw(st.booleans())).encode()
    change = draw(st.sampled_from(["none", "none", "cut", "byte", "spaces", "escape"]))
    if change == "cut":
        return body[:draw(st.integers(0, len(body)))]
    if change == "byte":
        at = draw(st.integers(0, len(body) - 1))
        return body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1:]
    if change == "spaces":
        return body.replace(b":", b" :\n").replace(b",", b"\t, ")
    return body.replace(b"e", b"\\u0065", 1)


@st.composite
def records(draw: st.DrawFn) -> tuple[Any, ...]:
    maybe_text = st.none() | st.text(max_size=6)
    upstream = st.none() | st.tuples(st.integers(0, 2 ** 63), st.integers(0, 2 ** 63),
                                     st.sampled_from(["openai", "azure", "gemini", "x"]), maybe_text,
                                     st.none() | st.floats())
    child = st.tuples(st.text(min_size=1, max_size=8), st.binary(min_size=8, max_size=8), st.integers(0, 2 ** 40),
                      st.integers(0, 2 ** 40), maybe_text,
                      st.lists(st.tuples(st.text(max_size=5), json_values), max_size=3).map(tuple))
    return (IDS, draw(st.sampled_from([b"", bytes(range(8))])), draw(st.sampled_from(["", "a=1", "é=ü"])),
            draw(st.sampled_from(["POST", "GET"])),
            draw(st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/other", "/ü"])),
            draw(st.integers(0, 2 ** 64 - 1)), draw(st.integers(0, 2 ** 64 - 1)),
            draw(st.none() | st.tuples(st.integers(0, 2 ** 40), st.integers(0, 2 ** 40), maybe_text)),
            draw(upstream), tuple(draw(st.lists(child, max_size=2))), draw(st.sampled_from([200, 400, 429, 502, 599])),
            draw(st.text(max_size=10)), draw(maybe_text), draw(maybe_text), draw(maybe_text), draw(maybe_text),
            draw(st.none() | st.tuples(*[st.integers(0, 2 ** 40)] * 4)), draw(st.none() | st.floats()),
            draw(st.booleans()), draw(bodies()), draw(bodies()),
            draw(st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=records())
def test_generated_records_encode_alike(encoders: tuple[Any, CallEncoder], record: tuple[Any, ...]) -> None:
    same(encoders, record)
