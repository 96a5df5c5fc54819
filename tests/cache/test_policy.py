"""The cache rules as pure functions: which requests take part, what is stored, for how long, under which key."""

from __future__ import annotations

from typing import ClassVar

import pytest

from llm_proxy.cache import KeySelector
from llm_proxy.cache.policy import (
    GET_RULE,
    RequestRule,
    not_modified,
    parse_cache_control,
    path_selector,
    request_key,
    request_rule,
    request_selector,
    response_facts,
    store_decision,
)

NOW = 1_700_000_000.0
PROJECT = "0b6c3c1e-5b7a-4b8e-9d52-3f1f2c7a9e01"
OTHER = "7d1f0a2b-1111-4c4c-8e8e-000000000002"


def decide(rule: RequestRule | None, headers: list[tuple[bytes, bytes]], status: int = 200,
           default_ttl: float = 300.0, streams: bool = False) -> tuple[float, str, bool]:
    assert rule is not None
    decision = store_decision(rule, status, response_facts(headers), default_ttl=default_ttl,
                              streams=streams, now=NOW)
    return decision.ttl, decision.reason, decision.forced


class TestCacheControl:
    def test_directives_are_case_insensitive_and_tolerate_spaces_and_quotes(self) -> None:
        cc = parse_cache_control(b'Public , MAX-AGE="60", s-maxage=30, No-Cache')
        assert (cc.public, cc.no_cache, cc.max_age, cc.s_maxage) == (True, True, 60, 30)

    def test_an_invalid_age_counts_as_zero(self) -> None:
        assert parse_cache_control("max-age=soon").max_age == 0
        assert parse_cache_control("max-age").max_age == 0

    def test_absent_header_has_no_directives(self) -> None:
        cc = parse_cache_control(None)
        assert not cc.no_store
        assert cc.max_age is None


class TestRequestRule:
    def test_get_takes_part_and_head_is_looked_up_as_get_but_never_stored(self) -> None:
        assert request_rule("GET", None) == GET_RULE
        head = request_rule("HEAD", None)
        assert head is not None
        assert head.method == "GET"
        assert head.lookup
        assert not head.store

    @pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
    def test_other_methods_never_take_part(self, method: str) -> None:
        assert request_rule(method, b"public, max-age=60") is None

    @pytest.mark.parametrize("header", [None, b"max-age=60", b"public", b"public, max-age=0", b"no-cache"])
    def test_post_without_a_public_positive_lifetime_does_not_take_part(self, header: bytes | None) -> None:
        assert request_rule("POST", header) is None

    def test_post_opts_in_with_public_and_a_lifetime_preferring_s_maxage(self) -> None:
        rule = request_rule("POST", b"public, max-age=60, s-maxage=120")
        assert rule is not None
        assert rule.lookup
        assert rule.store
        assert rule.forced_ttl == 120

    def test_no_store_bypasses_lookup_and_store(self) -> None:
        rule = request_rule("GET", b"no-store")
        assert rule is not None
        assert (rule.lookup, rule.store, rule.fwd) == (False, False, "bypass")

    @pytest.mark.parametrize("header", [b"no-cache", b"max-age=0", b"public, max-age=60, no-cache"])
    def test_no_cache_or_max_age_zero_revalidates_and_stores_the_fresh_answer(self, header: bytes) -> None:
        rule = request_rule("POST" if b"public" in header else "GET", header)
        assert rule is not None
        assert (rule.lookup, rule.store, rule.fwd) == (False, True, "request")

    def test_request_max_age_limits_the_age_of_an_acceptable_entry(self) -> None:
        rule = request_rule("GET", b"max-age=30, only-if-cached")
        assert rule is not None
        assert rule.max_age == 30
        assert rule.only_if_cached
        assert rule.forced_ttl is None


class TestStoreDecision:
    def test_s_maxage_wins_over_max_age_and_the_default(self) -> None:
        assert decide(GET_RULE, [(b"Cache-Control", b"public, max-age=60, s-maxage=600")]) == (600, "", False)

    def test_max_age_needs_public_or_must_revalidate_because_upstream_calls_carry_a_credential(self) -> None:
        assert decide(GET_RULE, [(b"cache-control", b"max-age=60")]) == (0, "no-ttl", False)
        assert decide(GET_RULE, [(b"cache-control", b"public, max-age=60")])[0] == 60
        assert decide(GET_RULE, [(b"cache-control", b"must-revalidate, max-age=60")])[0] == 60

    def test_the_default_ttl_applies_to_public_responses_stating_no_lifetime(self) -> None:
        assert decide(GET_RULE, [(b"cache-control", b"public")], default_ttl=300)[0] == 300
        assert decide(GET_RULE, [(b"cache-control", b"public")], default_ttl=0) == (0, "no-ttl", False)
        assert decide(GET_RULE, [], default_ttl=300) == (0, "no-ttl", False)

    def test_expires_is_used_relative_to_date_when_there_is_no_max_age(self) -> None:
        headers = [(b"cache-control", b"public"), (b"date", b"Tue, 14 Nov 2023 22:13:20 GMT"),
                   (b"expires", b"Tue, 14 Nov 2023 22:15:20 GMT")]
        assert decide(GET_RULE, headers)[0] == pytest.approx(120)

    def test_the_upstream_age_shortens_the_lifetime(self) -> None:
        assert decide(GET_RULE, [(b"cache-control", b"s-maxage=100"), (b"age", b"30")])[0] == 70

    @pytest.mark.parametrize(("cc", "reason"), [(b"no-store, s-maxage=60", "no-store"),
                                                (b"private, s-maxage=60", "private")])
    def test_no_store_and_private_are_never_stored_even_when_the_client_forces(self, cc: bytes, reason: str) -> None:
        forced = request_rule("POST", b"public, max-age=60")
        assert decide(forced, [(b"cache-control", cc)]) == (0, reason, False)

    def test_vary_star_is_never_stored(self) -> None:
        assert decide(GET_RULE, [(b"cache-control", b"s-maxage=60"), (b"vary", b"*")])[1] == "vary-star"

    def test_streams_need_stream_caching_enabled(self) -> None:
        forced = request_rule("POST", b"public, max-age=60")
        sse = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        assert decide(forced, sse, streams=False) == (0, "stream", False)
        assert decide(forced, sse, streams=True) == (60, "", True)

    def test_client_forced_lifetime_applies_to_200_and_203_only(self) -> None:
        forced = request_rule("POST", b"public, s-maxage=90")
        assert decide(forced, [], status=200) == (90, "", True)
        assert decide(forced, [], status=404) == (0, "status", False)
        assert decide(forced, [], status=500) == (0, "status", False)

    def test_an_explicit_upstream_lifetime_of_zero_beats_the_client(self) -> None:
        forced = request_rule("POST", b"public, max-age=60")
        assert decide(forced, [(b"cache-control", b"public, max-age=0")]) == (0, "stale", False)

    def test_upstream_lifetimes_only_store_cacheable_statuses(self) -> None:
        assert decide(GET_RULE, [(b"cache-control", b"s-maxage=60")], status=404)[0] == 60
        assert decide(GET_RULE, [(b"cache-control", b"s-maxage=60")], status=500) == (0, "status", False)

    def test_revalidation_stores_and_no_store_requests_do_not(self) -> None:
        assert decide(request_rule("GET", b"no-cache"), [(b"cache-control", b"s-maxage=60")])[0] == 60
        assert decide(request_rule("GET", b"no-store"), [(b"cache-control", b"s-maxage=60")])[1] == "request"


class TestKeys:
    def test_the_key_starts_with_project_path_and_method(self) -> None:
        key = request_key(PROJECT, "POST", "/v1/chat/completions", "", b"{}", {})
        assert key.base.startswith(f"{PROJECT}:/v1/chat/completions:POST:")

    def test_projects_methods_paths_bodies_and_queries_give_different_keys(self) -> None:
        base = request_key(PROJECT, "GET", "/v1/models", "a=1", b"", {})
        others = [request_key(OTHER, "GET", "/v1/models", "a=1", b"", {}),
                  request_key(PROJECT, "POST", "/v1/models", "a=1", b"", {}),
                  request_key(PROJECT, "GET", "/v1/model", "a=1", b"", {}),
                  request_key(PROJECT, "GET", "/v1/models", "a=2", b"", {}),
                  request_key(PROJECT, "GET", "/v1/models", "a=1", b"x", {}),
                  request_key(PROJECT, "GET", "/v1/models", "a=1", b"", {b"accept-encoding": b"gzip"})]
        assert len({k.base for k in [base, *others]}) == 7
        assert len({k.fingerprint() for k in [base, *others]}) == 7

    def test_query_parameter_order_does_not_matter_but_value_order_does(self) -> None:
        one = request_key(PROJECT, "GET", "/v1/models", "b=2&a=1", b"", {})
        two = request_key(PROJECT, "GET", "/v1/models", "a=1&b=2", b"", {})
        assert one == two
        assert request_key(PROJECT, "GET", "/v1/x", "a=1&a=2", b"", {}) != request_key(
            PROJECT, "GET", "/v1/x", "a=2&a=1", b"", {})

    def test_unrelated_headers_do_not_change_the_key(self) -> None:
        plain = request_key(PROJECT, "GET", "/v1/models", "", b"", {})
        noisy = request_key(PROJECT, "GET", "/v1/models", "", b"", {b"x-request-id": b"r1", b"user-agent": b"ua"})
        assert plain == noisy

    def test_variants_differ_by_the_values_of_the_varying_headers_only(self) -> None:
        key = request_key(PROJECT, "GET", "/v1/models", "", b"", {})
        en, en_fp = key.variant(("accept-language",), {b"accept-language": b"en"})
        en2, _ = key.variant(("accept-language",), {b"accept-language": b"en", b"x-other": b"1"})
        de, de_fp = key.variant(("accept-language",), {b"accept-language": b"de"})
        absent, _ = key.variant(("accept-language",), {})
        assert en == en2
        assert en.startswith(key.base + "~")
        assert len({en, de, absent}) == 3
        assert en_fp != de_fp != key.fingerprint()

    def test_whitespace_in_varying_values_is_normalised(self) -> None:
        key = request_key(PROJECT, "GET", "/v1/models", "", b"", {})
        assert key.variant(("accept",), {b"accept": b"a,  b"})[0] == key.variant(("accept",), {b"accept": b"a, b"})[0]


class TestSelectors:
    def test_a_request_selector_matches_every_variant_of_that_request_only(self) -> None:
        key = request_key(PROJECT, "GET", "/v1/models", "limit=5", b"", {b"accept": b"x"})
        variant, _ = key.variant(("accept-language",), {b"accept-language": b"en"})
        same = request_selector("GET", "/v1/models", "limit=5", project_id=PROJECT)
        assert same.matches(key.base)
        assert same.matches(variant)
        assert not request_selector("GET", "/v1/models", "limit=6", project_id=PROJECT).matches(key.base)
        assert not request_selector("GET", "/v1/models", "limit=5", project_id=OTHER).matches(key.base)
        assert request_selector("head", "/v1/models", "limit=5").matches(key.base)

    def test_a_body_narrows_a_request_selector(self) -> None:
        key = request_key(PROJECT, "POST", "/v1/chat/completions", "", b'{"a":1}', {})
        assert request_selector("POST", "/v1/chat/completions", "", b'{"a":1}').matches(key.base)
        assert not request_selector("POST", "/v1/chat/completions", "", b'{"a":2}').matches(key.base)

    def test_path_selectors_span_projects_unless_one_is_named(self) -> None:
        mine = request_key(PROJECT, "GET", "/v1/models/gpt", "", b"", {}).base
        theirs = request_key(OTHER, "GET", "/v1/models/gpt", "", b"", {}).base
        assert path_selector("/v1/models").matches(mine)
        assert path_selector("/v1/models").matches(theirs)
        scoped = path_selector("/v1/models", PROJECT)
        assert scoped.matches(mine)
        assert not scoped.matches(theirs)

    def test_globs_escape_special_characters(self) -> None:
        assert KeySelector("p:/v1/a*b?[c]").glob() == "p:/v1/a\\*b\\?\\[c\\]*"
        assert KeySelector("/v1", any_project=True).glob() == "*:/v1*"


class TestConditional:
    STORED: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"etag", b'W/"v1"'), (b"last-modified", b"Tue, 14 Nov 2023 22:13:20 GMT")]

    @pytest.mark.parametrize(("value", "expected"), [(b'"v1"', True), (b'"x", W/"v1"', True), (b"*", True),
                                                     (b'"v2"', False)])
    def test_if_none_match_uses_weak_comparison(self, value: bytes, expected: bool) -> None:
        assert not_modified({b"if-none-match": value}, self.STORED) is expected

    def test_if_none_match_wins_over_if_modified_since(self) -> None:
        headers = {b"if-none-match": b'"v2"', b"if-modified-since": b"Wed, 15 Nov 2023 00:00:00 GMT"}
        assert not not_modified(headers, self.STORED)

    def test_if_modified_since_compares_with_last_modified(self) -> None:
        assert not_modified({b"if-modified-since": b"Tue, 14 Nov 2023 22:13:20 GMT"}, self.STORED)
        assert not not_modified({b"if-modified-since": b"Mon, 13 Nov 2023 00:00:00 GMT"}, self.STORED)
        assert not not_modified({b"if-modified-since": b"garbage"}, self.STORED)

    def test_no_conditionals_or_no_validators_mean_a_full_answer(self) -> None:
        assert not not_modified({}, self.STORED)
        assert not not_modified({b"if-none-match": b"*"}, [])
