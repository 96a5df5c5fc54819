"""`llm-proxy manage` against the management app served by uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner, Result

from llm_proxy.audit import AuditRecorder
from llm_proxy.cli.manage import manage
from llm_proxy.clock import SystemClock
from llm_proxy.management import ManagementDeps, create_management_app
from llm_proxy.storage.cipher import KeyCipher
from llm_proxy.storage.database import open_storage
from tests.management.conftest import MANAGEMENT_TOKEN, management_settings
from tests.services import free_port


class LiveServer(threading.Thread):
    """The management app on its own event loop in a thread (the CLI runs its own loops)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(daemon=True)
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready = threading.Event()
        self.server: uvicorn.Server | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.failure = exc
            self.ready.set()

    async def _serve(self) -> None:
        settings = management_settings(self.tmp)
        storage = await open_storage(settings.storage, KeyCipher(None), migrate=True)
        clock = SystemClock()
        recorder = AuditRecorder(settings.audit, storage.audit, clock)
        app = create_management_app(ManagementDeps(settings, storage, recorder, clock))
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)
        self.ready.set()
        await serving
        await recorder.aclose()
        await storage.aclose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("cli"))
    server.start()
    assert server.ready.wait(20), "the management server did not start"
    assert server.failure is None, server.failure
    yield server
    assert server.server is not None
    server.server.should_exit = True
    server.join(20)


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from an empty directory so that no `.env` file leaks a token into the tests."""
    monkeypatch.chdir(tmp_path)


def run(live: LiveServer, *args: str, token: str | None = MANAGEMENT_TOKEN) -> Result:
    env = {"MANAGEMENT_TOKEN": token, "MANAGEMENT_API_BASE_URL": live.url}
    return CliRunner().invoke(manage, list(args), env=env)


def run_json(live: LiveServer, *args: str) -> Any:
    result = run(live, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def new_project(live: LiveServer) -> dict[str, Any]:
    name = f"cli-{secrets.token_hex(4)}"
    project: dict[str, Any] = run_json(live, "project", "create", "--name", name,
                                       "--api-key", "sk-cli-0123456789abcdef")
    return project


class TestManageProjects:
    def test_create_list_get_update_deactivate(self, live: LiveServer) -> None:
        project = new_project(live)
        assert project["api_key"] == "sk-cli-0...cdef"
        listing = run(live, "project", "list")
        assert listing.exit_code == 0
        assert project["name"] in listing.stdout
        assert "API Key" in listing.stdout.splitlines()[0]
        shown = run_json(live, "project", "get", project["id"])
        assert shown == project
        renamed = run_json(live, "project", "update", project["id"], "--name", project["name"] + "-x")
        assert renamed["name"] == project["name"] + "-x"
        off = run(live, "project", "deactivate", project["id"], "--revoke-tokens")
        assert off.exit_code == 0
        assert "Active:      no" in off.stdout

    def test_flags_work_on_the_group_and_override_the_environment(self, live: LiveServer) -> None:
        result = run(live, "--management-token", MANAGEMENT_TOKEN, "project", "list", token="wrong")
        assert result.exit_code == 0, result.output
        result = run(live, "project", "list", "--management-token", MANAGEMENT_TOKEN, token="wrong")
        assert result.exit_code == 0, result.output


class TestManageTokens:
    def test_create_list_get_update_revoke(self, live: LiveServer) -> None:
        project = new_project(live)
        created = run(live, "token", "create", "--project-id", project["id"], "--duration", "30",
                      "--max-requests", "5", "--metadata", '{"user_id": "alice"}')
        assert created.exit_code == 0, created.output
        secret = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("Token:"))
        assert secret.startswith("sk-")
        assert "not shown again" in created.stdout
        [listed] = run_json(live, "token", "list", "--project-id", project["id"])
        assert listed["metadata"] == {"user_id": "alice"}
        assert listed["token"] != secret
        table = run(live, "token", "list", "--project-id", project["id"])
        assert "0/5" in table.stdout
        assert secret not in table.stdout
        updated = run_json(live, "token", "update", listed["id"], "--max-requests", "0")
        assert updated["max_requests"] is None
        revoked = run(live, "token", "revoke", listed["id"])
        assert revoked.exit_code == 0
        assert run_json(live, "token", "get", listed["id"])["is_active"] is False

    def test_revoke_project_reports_counts(self, live: LiveServer) -> None:
        project = new_project(live)
        for _ in range(2):
            assert run(live, "token", "create", "--project-id", project["id"]).exit_code == 0
        result = run(live, "token", "revoke-project", project["id"])
        assert result.stdout.strip() == "Revoked 2 of 2 tokens (0 were already revoked)."

    def test_the_predecessor_generate_name_still_works(self, live: LiveServer) -> None:
        project = new_project(live)
        created = run_json(live, "token", "generate", "--project-id", project["id"])
        assert created["expires_at"]


class TestManageErrors:
    def test_http_errors_are_one_line(self, live: LiveServer) -> None:
        result = run(live, "project", "get", "0b6f7e0e-8d55-4b4e-9a53-2f1c4c8d9e10")
        assert result.exit_code == 1
        assert result.stderr == "llm-proxy: error: HTTP 404: project not found\n"

    def test_a_missing_token_is_one_clear_line(self, live: LiveServer) -> None:
        result = run(live, "project", "list", token=None)
        assert result.exit_code == 1
        assert result.stderr.startswith("llm-proxy: error: a management token is required")
        assert result.stderr.count("\n") == 1

    def test_a_wrong_token_is_reported(self, live: LiveServer) -> None:
        result = run(live, "token", "list", token="wrong")
        assert result.stderr == "llm-proxy: error: HTTP 401: invalid management token\n"

    def test_an_unreachable_server_is_one_clear_line(self, live: LiveServer) -> None:
        result = run(live, "--manage-api-base-url", f"http://127.0.0.1:{free_port()}", "project", "list")
        assert result.exit_code == 1
        assert "cannot connect to the management API" in result.stderr
        assert "Connection refused" in result.stderr

    def test_invalid_metadata_is_refused_before_calling(self, live: LiveServer) -> None:
        result = run(live, "token", "create", "--project-id", "x", "--metadata", "[1]")
        assert result.exit_code == 2
        assert "must be a JSON object" in result.stderr

    @pytest.mark.parametrize(
        "command",
        [[], ["project"], ["token"], ["project", "list"], ["project", "get"], ["project", "create"],
         ["project", "update"], ["project", "deactivate"], ["token", "create"], ["token", "list"],
         ["token", "get"], ["token", "update"], ["token", "revoke"], ["token", "revoke-project"]],
    )
    def test_every_command_has_help(self, live: LiveServer, command: list[str]) -> None:
        result = run(live, *command, "--help")
        assert result.exit_code == 0
        assert "Usage:" in result.stdout
