"""Purging and inspecting the cache through `/manage/cache/*` and `llm-proxy manage cache`, against
both backends: by request, path prefix, project, raw key prefix and all; the audit trail; the CLI;
the OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import CliRunner, Result

from llm_proxy.cli import cli
from tests.cache.conftest import call, manage
from tests.cache.upstream import HeaderUpstream
from tests.live import LiveProxy

CC = "cc=public,max-age=60"


async def fill(live: LiveProxy) -> dict[str, Any]:
    """Two projects, each with /v1/models (two variants), /v1/models/gpt-4o and /v1/files entries."""
    tokens = {}
    for name in ("a", "b"):
        project, token = await live.project_token()
        tokens[name] = (project["id"], token)
        for path, headers in ((f"/v1/models?{CC}&vary=Accept-Language", {"Accept-Language": "en"}),
                              (f"/v1/models?{CC}&vary=Accept-Language", {"Accept-Language": "de"}),
                              (f"/v1/models/gpt-4o?{CC}", {}), (f"/v1/files?{CC}", {})):
            assert (await call(live, "GET", path, token, headers=headers)).cache == "stored"
    return tokens


async def state(live: LiveProxy, tokens: dict[str, Any]) -> dict[str, str | None]:
    """Which of the filled entries are still hits (without storing anything new)."""
    found = {}
    for name, (_, token) in tokens.items():
        for label, path, headers in (("models-en", f"/v1/models?{CC}&vary=Accept-Language", {"Accept-Language": "en"}),
                                     ("gpt", f"/v1/models/gpt-4o?{CC}", {}), ("files", f"/v1/files?{CC}", {})):
            answer = await call(live, "GET", path, token, headers={**headers, "Cache-Control": "only-if-cached"})
            found[f"{name}-{label}"] = answer.cache
    return found


async def purge(live: LiveProxy, body: dict[str, Any]) -> tuple[int, Any]:
    return await manage(live, "POST", "/manage/cache/purge", body)


class TestPurge:
    async def test_one_request_in_one_project_with_all_its_variants(self, header_proxy: LiveProxy) -> None:
        tokens = await fill(header_proxy)
        project_a = tokens["a"][0]
        status, body = await purge(header_proxy, {"method": "GET", "url": f"/v1/models?{CC}&vary=Accept-Language",
                                                  "project_id": project_a})
        assert (status, body) == (200, {"deleted": 3, "scope": "request"})
        after = await state(header_proxy, tokens)
        assert after["a-models-en"] is None
        assert after["b-models-en"] == after["a-gpt"] == "hit"

    async def test_one_request_in_every_project_given_as_an_absolute_url(self, header_proxy: LiveProxy) -> None:
        tokens = await fill(header_proxy)
        status, body = await purge(header_proxy, {"method": "GET", "url": f"https://proxy.example/v1/files?{CC}"})
        assert (status, body["deleted"]) == (200, 2)
        after = await state(header_proxy, tokens)
        assert (after["a-files"], after["b-files"], after["a-gpt"]) == (None, None, "hit")

    async def test_a_path_prefix_across_projects_or_in_one(self, header_proxy: LiveProxy) -> None:
        tokens = await fill(header_proxy)
        status, body = await purge(header_proxy, {"path_prefix": "/v1/models/", "project_id": tokens["b"][0]})
        assert (status, body) == (200, {"deleted": 1, "scope": "path_prefix"})
        status, body = await purge(header_proxy, {"path_prefix": "/v1/models"})
        assert body["deleted"] == 7, "a: index, 2 variants, gpt-4o; b: index, 2 variants"
        after = await state(header_proxy, tokens)
        assert [after[k] for k in ("a-models-en", "a-gpt", "b-gpt", "a-files", "b-files")] \
            == [None, None, None, "hit", "hit"]

    async def test_a_project_a_raw_key_prefix_and_everything(self, header_proxy: LiveProxy) -> None:
        tokens = await fill(header_proxy)
        project_a, project_b = tokens["a"][0], tokens["b"][0]
        assert (await purge(header_proxy, {"project_id": project_a}))[1] == {"deleted": 5, "scope": "project"}
        raw = {"method": "GET", "url": "/ignored", "prefix": f"{project_b}:/v1/files:GET:"}
        assert (await purge(header_proxy, raw))[1] == {"deleted": 1, "scope": "prefix"}
        assert (await purge(header_proxy, {"all": True}))[1] == {"deleted": 4, "scope": "all"}
        assert set((await state(header_proxy, tokens)).values()) == {None}

    async def test_a_post_is_purged_by_its_body(self, mock_proxy: LiveProxy) -> None:
        _, token = await mock_proxy.project_token()
        opt_in = {"Cache-Control": "public, max-age=60"}
        bodies = ['{"model":"gpt-4o-mini","messages":[{"role":"user","content":"one"}]}',
                  '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"two"}]}']
        for raw in bodies:
            assert await _post_raw(mock_proxy, token, raw, opt_in) == "stored"
        status, body = await purge(mock_proxy, {"method": "POST", "url": "/v1/chat/completions", "body": bodies[0]})
        assert (status, body["deleted"]) == (200, 1)
        assert (await _post_raw(mock_proxy, token, bodies[0], opt_in)) == "stored"
        assert (await _post_raw(mock_proxy, token, bodies[1], opt_in)) == "hit"

    async def test_purges_are_audited(self, header_proxy: LiveProxy) -> None:
        tokens = await fill(header_proxy)
        await purge(header_proxy, {"project_id": tokens["a"][0]})
        await purge(header_proxy, {"url": "/v1/models"})
        for _ in range(100):
            _, page = await manage(header_proxy, "GET", "/manage/audit?action=cache.purge")
            if len(page["events"]) == 2:
                break
            await asyncio.sleep(0.05)
        outcomes = sorted((e["outcome"], e["details"].get("purge_type"), e["details"].get("deleted"))
                          for e in page["events"])
        assert outcomes == [("failure", None, None), ("success", "project", 5)]


async def _post_raw(live: LiveProxy, token: str, raw: str, headers: dict[str, str]) -> str | None:
    sent = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers}
    async with live.http.post(f"{live.url}/v1/chat/completions", data=raw, headers=sent) as resp:
        await resp.read()
        return resp.headers.get("X-PROXY-CACHE")


class TestPurgeErrors:
    async def test_bad_purges_are_400_and_need_the_management_token(self, header_proxy: LiveProxy) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "say what to purge"), ({"url": "/v1/models"}, "method and url are required"),
            ({"method": "GET", "url": "ftp://x/v1"}, "url"),
            ({"method": "GET", "url": "v1/models"}, "url"),
            ({"project_id": "not-a-uuid"}, "project_id"), ({"everything": True}, "unknown field"),
            ({"all": None}, "must not be null")]
        for body, message in cases:
            status, answer = await purge(header_proxy, body)
            assert status == 400, body
            assert message in answer["error"], (body, answer)
        status, answer = await purge(header_proxy, {"all": True, "path_prefix": "/v1/nothing-cached"})
        assert status == 200 and answer == {"deleted": 0, "scope": "path_prefix"}, "the narrowest selector wins"
        async with header_proxy.http.post(f"{header_proxy.url}/manage/cache/purge", json={"all": True}) as resp:
            assert resp.status == 401
        async with header_proxy.http.get(f"{header_proxy.url}/manage/cache/stats") as resp:
            assert resp.status == 401


class TestStatsAndOpenApi:
    async def test_stats_report_backend_contents_and_counters(self, header_proxy: LiveProxy,
                                                              upstream: HeaderUpstream) -> None:
        _, token = await header_proxy.project_token()
        for _ in range(3):
            await call(header_proxy, "GET", f"/v1/models?{CC}", token)
        status, stats = await manage(header_proxy, "GET", "/manage/cache/stats")
        assert status == 200
        assert (stats["enabled"], stats["available"], stats["entries"]) == (True, True, 1)
        assert (stats["hits"], stats["misses"], stats["stores"], stats["bypasses"]) == (2, 1, 1, 0)
        assert stats["backend"] in ("in-memory", "redis")

    async def test_the_openapi_document_declares_both_operations(self, header_proxy: LiveProxy) -> None:
        async with header_proxy.http.get(f"{header_proxy.url}/manage/openapi.json") as resp:
            document = await resp.json()
        purge_op = document["paths"]["/manage/cache/purge"]["post"]
        assert sorted(purge_op["responses"]) == ["200", "400", "401", "413", "503"]
        assert purge_op["security"] == [{"ManagementToken": []}]
        schema = purge_op["requestBody"]["content"]["application/json"]["schema"]
        assert schema["additionalProperties"] is False
        assert set(schema["properties"]) == {"method", "url", "body", "path_prefix", "project_id", "prefix", "all"}
        stats_op = document["paths"]["/manage/cache/stats"]["get"]
        assert sorted(stats_op["responses"]) == ["200", "401"]
        assert "CacheStatsOut" in document["components"]["schemas"]


def run_cli(args: list[str]) -> Result:
    return CliRunner().invoke(cli, ["manage", "cache", *args])


class TestCli:
    async def test_purge_and_stats_from_the_command_line(self, header_proxy: LiveProxy) -> None:
        tokens = await fill(header_proxy)
        conn = ["--api-base-url", header_proxy.url, "--management-token", header_proxy.management_token]
        exact = await asyncio.to_thread(run_cli, ["purge", "--method", "GET", "--url", f"/v1/files?{CC}",
                                                  "--project-id", tokens["a"][0], *conn])
        assert (exact.exit_code, exact.output.strip()) == (0, "Cache entry deleted successfully")
        again = await asyncio.to_thread(run_cli, ["purge", "--method", "GET", "--url", f"/v1/files?{CC}",
                                                  "--project-id", tokens["a"][0], *conn])
        assert again.output.strip() == "Cache entry was not found"
        prefix = await asyncio.to_thread(run_cli, ["purge", "--prefix", tokens["b"][0] + ":", *conn])
        assert prefix.output.strip() == "Cache prefix purge completed: 5 entries deleted"
        everything = await asyncio.to_thread(run_cli, ["purge", "--all", "--json", *conn])
        assert everything.exit_code == 0
        assert '"deleted": 4' in everything.output
        stats = await asyncio.to_thread(run_cli, ["stats", *conn])
        assert stats.exit_code == 0
        assert "Entries:" in stats.output

    async def test_failures_are_one_line_and_exit_1(self, header_proxy: LiveProxy) -> None:
        wrong = await asyncio.to_thread(run_cli, ["purge", "--all", "--api-base-url", header_proxy.url,
                                                  "--management-token", "wrong"])
        assert wrong.exit_code == 1
        assert wrong.output.strip() == "llm-proxy: error: HTTP 401: invalid management token"
        nothing = await asyncio.to_thread(run_cli, ["purge", "--api-base-url", header_proxy.url,
                                                    "--management-token", "x"])
        assert nothing.exit_code == 2
