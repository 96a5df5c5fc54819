"""The response cache end to end, through a real server, against both backends: opt-in, isolation
per project, Vary, conditional requests, streams, size bounds and the headers of every outcome."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.cache.conftest import CHAT, OPT_IN, cached_proxy, call
from tests.cache.upstream import HeaderUpstream
from tests.live import LiveProxy

MODELS = "/v1/models?cc=public,max-age=60"
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


class TestOptIn:
    async def test_post_is_cached_only_when_the_client_opts_in(self, mock_proxy: LiveProxy) -> None:
        project, token = await mock_proxy.project_token()
        plain = await call(mock_proxy, "POST", "/v1/chat/completions", token, json=CHAT)
        assert plain.status == 200
        assert plain.cache is None
        assert "Cache-Status" not in plain.headers
        first = await call(mock_proxy, "POST", "/v1/chat/completions", token, json=CHAT, headers=OPT_IN)
        assert first.cache == "stored"
        assert first.headers["Cache-Status"] == "llm-proxy; fwd=miss; stored"
        key = first.headers["X-PROXY-CACHE-KEY"]
        assert key.startswith(f"{project['id']}:/v1/chat/completions:POST:")
        second = await call(mock_proxy, "POST", "/v1/chat/completions", token, json=CHAT,
                            headers={**OPT_IN, "X-Request-ID": "second-call"})
        assert (second.status, second.cache, second.body) == (200, "hit", first.body)
        assert second.headers["X-Request-ID"] == "second-call"
        assert second.headers["X-PROXY-CACHE-KEY"] == key
        assert second.headers["Cache-Status"].startswith("llm-proxy; hit; ttl=")
        assert int(second.headers["Age"]) >= 0
        other = await call(mock_proxy, "POST", "/v1/chat/completions", token,
                           json={**CHAT, "temperature": 0.5}, headers=OPT_IN)
        assert other.cache == "stored"
        assert other.headers["X-PROXY-CACHE-KEY"] != key

    async def test_a_get_is_stored_on_the_upstreams_say_so_and_served_with_its_age(
            self, header_proxy: LiveProxy, upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        stored = await call(header_proxy, "GET", MODELS + "&age=30", token)
        assert stored.cache == "stored"
        hit = await call(header_proxy, "GET", MODELS + "&age=30", token)
        assert (hit.cache, hit.json()["n"], upstream.calls) == ("hit", 1, 1)
        assert 30 <= int(hit.headers["Age"]) <= 31
        assert hit.headers.getall("Age") == [hit.headers["Age"]]
        younger = await call(header_proxy, "GET", MODELS + "&age=30", token,
                             headers={"Cache-Control": "max-age=10"})
        assert younger.headers["Cache-Status"].startswith("llm-proxy; fwd=request")
        assert upstream.calls == 2

    async def test_responses_the_upstream_keeps_private_are_not_stored(
            self, header_proxy: LiveProxy, upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        for _ in range(2):
            answer = await call(header_proxy, "GET", "/v1/models?cc=private,max-age=60", token,
                                headers={"Cache-Control": "public, max-age=60"})
            assert answer.cache == "miss"
            assert answer.headers["Cache-Status"] == "llm-proxy; fwd=miss; detail=private"
        assert upstream.calls == 2

    async def test_no_store_bypasses_and_no_cache_refreshes_the_entry(
            self, header_proxy: LiveProxy, upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        assert (await call(header_proxy, "GET", MODELS, token)).cache == "stored"
        bypass = await call(header_proxy, "GET", MODELS, token, headers={"Cache-Control": "no-store"})
        assert bypass.cache == "bypass"
        assert bypass.headers["Cache-Status"] == "llm-proxy; fwd=bypass; detail=no-store"
        refreshed = await call(header_proxy, "GET", MODELS, token, headers={"Cache-Control": "no-cache"})
        assert (refreshed.cache, refreshed.json()["n"]) == ("stored", 3)
        assert refreshed.headers["Cache-Status"] == "llm-proxy; fwd=request; stored"
        assert (await call(header_proxy, "GET", MODELS, token)).json()["n"] == 3

    async def test_only_if_cached_never_goes_upstream(self, header_proxy: LiveProxy, upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        missing = await call(header_proxy, "GET", MODELS, token, headers={"Cache-Control": "only-if-cached"})
        assert missing.status == 504
        assert upstream.calls == 0
        await call(header_proxy, "GET", MODELS, token)
        found = await call(header_proxy, "GET", MODELS, token, headers={"Cache-Control": "only-if-cached"})
        assert (found.status, found.cache) == (200, "hit")

    async def test_hits_carry_the_current_requests_cors_headers(self, header_proxy: LiveProxy) -> None:
        _, token = await header_proxy.project_token()
        await call(header_proxy, "GET", MODELS, token, headers={"Origin": "https://one.example"})
        hit = await call(header_proxy, "GET", MODELS, token, headers={"Origin": "https://two.example"})
        assert hit.cache == "hit"
        assert hit.headers.getall("Access-Control-Allow-Origin") == ["https://two.example"]


class TestIsolation:
    async def test_one_projects_entry_is_never_served_to_another(
            self, header_proxy: LiveProxy, upstream: HeaderUpstream) -> None:
        (a, token_a), (b, token_b) = await header_proxy.project_token(), await header_proxy.project_token()
        first_a = await call(header_proxy, "GET", MODELS, token_a)
        first_b = await call(header_proxy, "GET", MODELS, token_b)
        assert (first_a.cache, first_b.cache) == ("stored", "stored")
        assert first_a.headers["X-PROXY-CACHE-KEY"].startswith(a["id"] + ":")
        assert first_b.headers["X-PROXY-CACHE-KEY"].startswith(b["id"] + ":")
        again_a = await call(header_proxy, "GET", MODELS, token_a)
        again_b = await call(header_proxy, "GET", MODELS, token_b)
        assert [again_a.cache, again_b.cache] == ["hit", "hit"]
        assert [again_a.json()["n"], again_b.json()["n"], upstream.calls] == [1, 2, 2]

    async def test_tokens_of_one_project_share_its_entries(self, header_proxy: LiveProxy) -> None:
        project, token = await header_proxy.project_token()
        other_token = await header_proxy.create_token(project["id"])
        await call(header_proxy, "GET", MODELS, token)
        assert (await call(header_proxy, "GET", MODELS, other_token)).cache == "hit"


class TestVary:
    async def test_each_variant_is_stored_and_found_again(self, header_proxy: LiveProxy,
                                                           upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        path = MODELS + "&vary=Accept-Language"

        async def ask(language: str | None) -> tuple[str | None, int, str]:
            headers = {"Accept-Language": language} if language else {}
            answer = await call(header_proxy, "GET", path, token, headers=headers)
            return answer.cache, answer.json()["n"], answer.headers["Cache-Status"]

        assert (await ask("en"))[:2] == ("stored", 1)
        assert await ask("de") == ("stored", 2, "llm-proxy; fwd=vary-miss; stored")
        assert (await ask("en"))[:2] == ("hit", 1)
        assert (await ask("de"))[:2] == ("hit", 2)
        assert (await ask(None))[:2] == ("stored", 3)
        assert (await ask(None))[:2] == ("hit", 3)
        assert upstream.calls == 3

    async def test_vary_star_is_never_stored(self, header_proxy: LiveProxy, upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        for _ in range(2):
            answer = await call(header_proxy, "GET", MODELS + "&vary=*", token)
            assert answer.headers["Cache-Status"] == "llm-proxy; fwd=miss; detail=vary-star"
        assert upstream.calls == 2


class TestConditional:
    async def test_a_matching_if_none_match_gets_a_304_from_the_cache(
            self, header_proxy: LiveProxy, upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        path = MODELS + "&etag=v1"
        await call(header_proxy, "GET", path, token)
        same = await call(header_proxy, "GET", path, token, headers={"If-None-Match": '"v1"', "X-Request-ID": "c-1"})
        assert (same.status, same.cache, same.body) == (304, "conditional-hit", b"")
        assert same.headers["ETag"] == '"v1"'
        assert same.headers["X-Request-ID"] == "c-1"
        assert same.headers["Cache-Status"].endswith("detail=conditional")
        changed = await call(header_proxy, "GET", path, token, headers={"If-None-Match": '"v0"'})
        assert (changed.status, changed.cache, changed.json()["n"]) == (200, "hit", 1)
        assert upstream.calls == 1

    async def test_if_modified_since_is_compared_with_the_stored_last_modified(self, header_proxy: LiveProxy) -> None:
        _, token = await header_proxy.project_token()
        path = MODELS + "&lm=Tue, 14 Nov 2023 22:13:20 GMT"
        await call(header_proxy, "GET", path, token)
        later = await call(header_proxy, "GET", path, token,
                           headers={"If-Modified-Since": "Wed, 15 Nov 2023 00:00:00 GMT"})
        earlier = await call(header_proxy, "GET", path, token,
                             headers={"If-Modified-Since": "Mon, 13 Nov 2023 00:00:00 GMT"})
        assert (later.status, earlier.status) == (304, 200)


class TestStreams:
    async def test_a_complete_stream_is_replayed_byte_for_byte(self, mock_proxy: LiveProxy) -> None:
        _, token = await mock_proxy.project_token()
        first = await call(mock_proxy, "POST", "/v1/chat/completions", token, json=STREAM, headers=OPT_IN)
        assert first.cache == "miss"
        assert first.body.rstrip().endswith(b"data: [DONE]")
        replay = await call(mock_proxy, "POST", "/v1/chat/completions", token, json=STREAM, headers=OPT_IN)
        assert replay.cache == "hit"
        assert replay.body == first.body
        assert replay.headers["Content-Type"].startswith("text/event-stream")

    async def test_an_interrupted_stream_is_not_stored(self, mock_proxy: LiveProxy) -> None:
        _, token = await mock_proxy.project_token()
        cut = await call(mock_proxy, "POST", "/v1/chat/completions", token, json=STREAM,
                         headers={**OPT_IN, "X-Mock-Drop-After-Chunks": "3"})
        assert b"[DONE]" not in cut.body
        whole = await call(mock_proxy, "POST", "/v1/chat/completions", token, json=STREAM, headers=OPT_IN)
        assert whole.cache == "miss"
        assert whole.body.rstrip().endswith(b"data: [DONE]")
        assert (await call(mock_proxy, "POST", "/v1/chat/completions", token, json=STREAM,
                           headers=OPT_IN)).body == whole.body

    async def test_streams_are_not_stored_unless_stream_caching_is_on(self, tmp_path: Path) -> None:
        async with cached_proxy(tmp_path, "in-memory", {"HTTP_CACHE_STREAM_RESPONSES": "false"}) as live:
            _, token = await live.project_token()
            for _ in range(2):
                answer = await call(live, "POST", "/v1/chat/completions", token, json=STREAM, headers=OPT_IN)
                assert answer.headers["Cache-Status"] == "llm-proxy; fwd=miss; detail=stream"


class TestBrokenBodies:
    async def test_a_body_the_upstream_breaks_off_is_passed_on_and_not_stored(
            self, header_proxy: LiveProxy, upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        for _ in range(2):
            sent = {"Authorization": f"Bearer {token}"}
            async with header_proxy.http.get(f"{header_proxy.url}{MODELS}&drop=1", headers=sent) as resp:
                assert resp.status == 200
                assert resp.headers["Cache-Status"] == "llm-proxy; fwd=miss; detail=incomplete"
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
        assert upstream.calls == 2


class TestSizeBound:
    @pytest.fixture
    def small(self) -> dict[str, str]:
        return {"HTTP_CACHE_MAX_OBJECT_BYTES": "4096"}

    async def test_an_oversize_stream_is_relayed_whole_and_not_stored(self, tmp_path: Path,
                                                                       small: dict[str, str]) -> None:
        async with cached_proxy(tmp_path, "in-memory", small) as live:
            _, token = await live.project_token()
            headers = {**OPT_IN, "X-Mock-Chunks": "200"}
            big = await call(live, "POST", "/v1/chat/completions", token, json=STREAM, headers=headers)
            assert len(big.body) > 4096
            assert big.body.rstrip().endswith(b"data: [DONE]")
            again = await call(live, "POST", "/v1/chat/completions", token, json=STREAM, headers=headers)
            assert again.cache == "miss"

    async def test_an_oversize_body_is_relayed_whole_and_not_stored(
            self, tmp_path: Path, small: dict[str, str], upstream: HeaderUpstream) -> None:
        async with cached_proxy(tmp_path, "in-memory", {**small, "OPENAI_API_URL": upstream.url}) as live:
            _, token = await live.project_token()
            for _ in range(2):
                answer = await call(live, "GET", MODELS + "&size=10000", token)
                assert (answer.status, len(answer.body)) == (200, 10000)
                assert answer.headers["Cache-Status"] == "llm-proxy; fwd=miss; detail=too-large"
            fits = await call(live, "GET", MODELS + "&size=4000", token)
            assert fits.cache == "stored"
        assert upstream.calls == 3
