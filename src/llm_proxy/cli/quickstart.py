"""`llm-proxy quickstart`: the embedded set-up in one command.

SQLite under ./data, the in-memory event bus, events appended to ./data/events.jsonl, and —
when OPENAI_API_KEY is not set — the bundled mock upstream on a loopback port. It creates (or
reuses) a project named `quickstart`, issues a fresh token, and prints ready-to-paste examples.
The generated MANAGEMENT_TOKEN is kept in ./data/quickstart.env so restarts reuse it.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import click
import uvicorn

from llm_proxy.app import create_app
from llm_proxy.cli.options import build_environment, ensure_port_free, settings_or_exit
from llm_proxy.cli.server import check_providers, exit_cleanly_after_shutdown, uvicorn_config
from llm_proxy.settings import Settings, export_environment, load_dotenv
from llm_proxy.telemetry.logs import configure_logging

MOCK_KEY = "sk-mock-quickstart-key"


@click.command()
@click.option("--addr", default="127.0.0.1:8080", show_default=True, help="Listen address.")
@click.option("--data-dir", default="./data", show_default=True, help="Where the database and logs go.")
@click.option("--mock/--no-mock", default=None,
              help="Use the bundled mock upstream (default: when OPENAI_API_KEY is unset).")
def quickstart(addr: str, data_dir: str, mock: bool | None) -> None:
    """Run llm-proxy with embedded defaults and print a working token and examples."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    saved: dict[str, str] = {}
    load_dotenv(str(data / "quickstart.env"), saved)
    env = build_environment(".env", {})
    management_token = env.get("MANAGEMENT_TOKEN") or saved.get("MANAGEMENT_TOKEN") or secrets.token_hex(16)
    (data / "quickstart.env").write_text(f"MANAGEMENT_TOKEN={management_token}\n")
    upstream_key = env.get("OPENAI_API_KEY", "")
    use_mock = mock if mock is not None else not upstream_key
    env.update({
        "MANAGEMENT_TOKEN": management_token, "LISTEN_ADDR": addr,
        "DATABASE_PATH": env.get("DATABASE_PATH", str(data / "llm-proxy.db")),
        "AUDIT_LOG_FILE": env.get("AUDIT_LOG_FILE", str(data / "audit.log")),
        "FILE_EVENT_LOG": env.get("FILE_EVENT_LOG", str(data / "events.jsonl")),
        "LLM_PROXY_EVENT_BUS": env.get("LLM_PROXY_EVENT_BUS", "in-memory"),
        "LOG_FORMAT": env.get("LOG_FORMAT", "console"),
    })
    settings = settings_or_exit(env)
    check_providers(settings)
    ensure_port_free(settings.server.listen_addr)
    exit_cleanly_after_shutdown()
    asyncio.run(_run(env, use_mock, upstream_key or MOCK_KEY))


async def _run(env: dict[str, str], use_mock: bool, upstream_key: str) -> None:
    mock_server = None
    if use_mock:
        from llm_proxy.mock_upstream.server import start_mock

        mock_server = await start_mock("127.0.0.1", 0)
        env["OPENAI_API_URL"] = mock_server.url
    export_environment(env)
    settings = settings_or_exit(env)
    configure_logging(settings.log)
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    provision = asyncio.create_task(_provision_when_ready(server, settings, upstream_key, use_mock))
    try:
        await server.serve()
    finally:
        provision.cancel()
        if mock_server is not None:
            await mock_server.close()


async def _provision_when_ready(server: uvicorn.Server, settings: Settings, upstream_key: str,
                                use_mock: bool) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes start-up only as a flag
        await asyncio.sleep(0.05)
    host, _, port = settings.server.listen_addr.rpartition(":")
    base = f"http://{host if host not in {'', '0.0.0.0'} else '127.0.0.1'}:{port}"
    auth = {"Authorization": f"Bearer {settings.server.management_token}"}
    async with aiohttp.ClientSession(base, headers=auth) as http:
        project = await _quickstart_project(http, upstream_key)
        async with http.post("/manage/tokens", json={"project_id": project["id"], "duration_minutes": 1440}) as r:
            token = (await r.json())["token"]
    click.echo(_banner(base, token, settings.server.management_token, use_mock))


async def _quickstart_project(http: aiohttp.ClientSession, upstream_key: str) -> dict[str, Any]:
    async with http.get("/manage/projects", params={"page_size": "500"}) as resp:
        for project in await resp.json():
            if project["name"] == "quickstart":
                async with http.patch(f"/manage/projects/{project['id']}",
                                      json={"api_key": upstream_key, "is_active": True}) as patched:
                    result: dict[str, Any] = await patched.json()
                    return result
    async with http.post("/manage/projects", json={"name": "quickstart", "api_key": upstream_key}) as resp:
        created: dict[str, Any] = await resp.json()
        return created


def _banner(base: str, token: str, management_token: str, use_mock: bool) -> str:
    upstream = "the bundled mock upstream (set OPENAI_API_KEY to use OpenAI)" if use_mock else "OpenAI"
    return f"""
llm-proxy is running on {base}, forwarding to {upstream}.
Management token: {management_token}   (kept in ./data/quickstart.env)
Project token (24 h): {token}

Try it:
  curl -s {base}/v1/chat/completions \\
    -H "Authorization: Bearer {token}" -H "Content-Type: application/json" \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  # with the official SDK (pip install openai):
  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='{token}'); \\
print(c.chat.completions.create(model='gpt-4o-mini', \\
messages=[{{'role': 'user', 'content': 'Hello!'}}]).choices[0].message.content)"

  llm-proxy chat --proxy {base} --token {token}
  llm-proxy manage token list --management-token {management_token}
Events: ./data/events.jsonl   Audit: ./data/audit.log   Stop with Ctrl-C.
"""
