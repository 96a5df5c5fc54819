"""The event schema: encoding round trip, wire shape, header sanitizing, no secrets."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import msgspec
import orjson
import pytest

from llm_proxy.events import (
    SCHEMA_VERSION,
    Event,
    EventDecodeError,
    cap_body,
    decode_event,
    encode_event,
    sanitize_headers,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
CLIENT_TOKEN = "sk-proj-0123456789abcdef0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-ffffeeeeddddccccbbbbaaaa99998888"


def full_event() -> Event:
    return Event(
        request_id="req-1", started_at=T0, first_byte_at=T0, ended_at=T0, duration_ms=12.5,
        upstream_ms=10.0, overhead_ms=2.5, method="POST", path="/v1/chat/completions",
        query="a=1", status=200, provider="openai", model="gpt-4o", stream=True,
        project_id="p", token_id="t", token_metadata={"user_id": "u", "tags": ["x", 1]},
        user_id="u", client_ip="127.0.0.1", cache_status="miss",
        request_headers={"content-type": "application/json"},
        response_headers={"x-request-id": "req-1"}, request_body=b"\x00\xff{}",
        request_body_truncated=True, response_body=b"data: [DONE]\n\n",
        content_encoding="gzip", error="boom", error_code="upstream_error",
        client_disconnected=True, upstream_error=True, input_tokens=3, output_tokens=4,
        total_tokens=7, cached_tokens=1, reasoning_tokens=2, usage_estimated=True,
        cost_usd=0.0012, cost_known=True, trace_id="0af7651916cd43dd8448eb211c80319c",
    )


class TestEventEncoding:
    def test_round_trip_preserves_every_field(self) -> None:
        event = full_event()
        assert decode_event(encode_event(event)) == event

    def test_wire_format_uses_rfc3339_utc_timestamps_and_base64_bodies(self) -> None:
        wire = orjson.loads(encode_event(full_event()))
        assert wire["started_at"] == "2025-01-02T03:04:05.123456Z"
        assert base64.b64decode(wire["request_body"]) == b"\x00\xff{}"
        assert wire["schema_version"] == SCHEMA_VERSION
        assert set(wire) == set(Event.__struct_fields__)

    def test_new_events_get_distinct_time_ordered_uuid7_ids(self) -> None:
        ids = [Event(started_at=T0, ended_at=T0).event_id for _ in range(50)]
        assert len(set(ids)) == 50
        assert all(uuid.UUID(i).version == 7 for i in ids)
        assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)

    def test_decoding_ignores_fields_added_by_a_newer_schema(self) -> None:
        event = full_event()
        wire = orjson.loads(encode_event(event))
        wire["added_in_v2"] = {"anything": True}
        assert decode_event(orjson.dumps(wire)) == event

    @pytest.mark.parametrize("payload", [b"not json", b"{}", b'{"started_at": 5}', b"[]"])
    def test_invalid_payloads_raise_event_decode_error(self, payload: bytes) -> None:
        with pytest.raises(EventDecodeError):
            decode_event(payload)

    def test_the_dispatcher_can_fill_usage_later(self) -> None:
        event = msgspec.structs.replace(full_event(), input_tokens=100, cost_usd=None)
        assert decode_event(encode_event(event)).input_tokens == 100

    def test_cap_body_keeps_the_prefix_and_flags_the_cut(self) -> None:
        assert cap_body(b"abcdef", 4) == (b"abcd", True)
        assert cap_body(b"abcd", 4) == (b"abcd", False)


class TestSanitizeHeaders:
    @pytest.mark.parametrize("name", [
        "Authorization", "proxy-authorization", "Cookie", "Set-Cookie", "api-key", "X-Api-Key",
        "x-goog-api-key", "X-Auth-Token", "x-amz-security-token", "openai_api_key",
        "X-Client-Secret", "helicone-auth", "x-session-id", "x-password",
    ])
    def test_credential_headers_are_dropped(self, name: str) -> None:
        assert sanitize_headers([(name, "value"), ("accept", "*/*")]) == {"accept": "*/*"}

    @pytest.mark.parametrize("name", [
        "x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens", "content-type",
        "openai-organization", "www-authenticate", "x-llm-proxy-user", "keep-alive",
    ])
    def test_ordinary_headers_are_kept(self, name: str) -> None:
        assert sanitize_headers([(name, "v")]) == {name: "v"}

    def test_bearer_and_basic_values_are_dropped_whatever_the_name(self) -> None:
        headers = [("x-forwarded-credentials-ish", "Bearer abc"), ("x-custom", "basic Zm9v"),
                   ("x-fine", "bearable")]
        assert sanitize_headers(headers) == {"x-fine": "bearable"}

    def test_asgi_raw_headers_are_decoded_lowercased_and_repeats_joined(self) -> None:
        raw = [(b"Accept", b"a"), (b"accept", b"b"), (b"X-Request-ID", b"r")]
        assert sanitize_headers(raw) == {"accept": "a, b", "x-request-id": "r"}


class TestNoSecretsInEvents:
    def test_serialized_event_contains_neither_client_token_nor_upstream_key(self) -> None:
        request = [(b"authorization", f"Bearer {CLIENT_TOKEN}".encode()),
                   (b"x-api-key", UPSTREAM_KEY.encode()), (b"content-type", b"application/json")]
        response = [(b"set-cookie", f"s={CLIENT_TOKEN}".encode()), (b"x-request-id", b"r")]
        event = Event(started_at=T0, ended_at=T0, request_headers=sanitize_headers(request),
                      response_headers=sanitize_headers(response), request_body=b'{"model":"m"}')
        wire = encode_event(event)
        for secret in (CLIENT_TOKEN, UPSTREAM_KEY):
            assert secret.encode() not in wire
            assert base64.b64encode(secret.encode())[:24] not in wire
        assert event.request_headers == {"content-type": "application/json"}
