"""`llm-proxy migrate up|down|status` on SQLite (the same runner the storage suite checks on all three DBs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_proxy.cli import cli


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    for name in ("DB_DRIVER", "DATABASE_URL", "DATABASE_PATH"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


class TestMigrateCommand:
    def test_status_up_down_cycle(self, runner: CliRunner, tmp_path: Path) -> None:
        db = str(tmp_path / "m.db")
        before = runner.invoke(cli, ["migrate", "--db", db, "status"])
        assert before.exit_code == 0, before.output
        assert "Current migration version: none" in before.output and "pending" in before.output
        up = runner.invoke(cli, ["migrate", "--db", db, "up"])
        assert up.exit_code == 0 and "Migrations applied successfully" in up.output
        after = runner.invoke(cli, ["migrate", "--db", db, "status"])
        assert "up to date" in after.output
        down = runner.invoke(cli, ["migrate", "--db", db, "down"])
        assert down.exit_code == 0 and "rolled back" in down.output
        assert "pending" in runner.invoke(cli, ["migrate", "--db", db, "status"]).output

    def test_unreachable_database_is_one_clear_error(self, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DB_DRIVER", "postgres")
        monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
        result = runner.invoke(cli, ["migrate", "status"])
        assert result.exit_code == 1
        assert result.output.startswith("Error: database error:")
        assert "Traceback" not in result.output

    def test_help_lists_the_subcommands(self, runner: CliRunner) -> None:
        result = runner.invoke(cli, ["migrate", "--help"])
        assert result.exit_code == 0
        for name in ("up", "down", "status"):
            assert name in result.output
