from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from llm_proxy.cli import cli
from llm_proxy.mock_upstream import ThreadedMock


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedMock]:
    with ThreadedMock(api_key="sk-good") as mock:
        yield mock


def run_chat(
    upstream: ThreadedMock, *args: str, token: str | None = "sk-good", **kwargs: Any
) -> Result:
    argv = ["chat", "--proxy", upstream.url, *args]
    if token is not None:
        argv += ["--token", token]
    return CliRunner().invoke(cli, argv, catch_exceptions=False, **kwargs)


class TestChatMessageMode:
    @pytest.mark.parametrize("mode", ["--stream", "--no-stream"])
    def test_prints_the_reply(self, upstream, mode):
        result = run_chat(upstream, mode, "--message", "hello big world")
        assert result.exit_code == 0, result.output
        assert result.stdout == "hello big world\n"

    def test_max_tokens_and_model_are_sent(self, upstream):
        result = run_chat(upstream, "--no-stream", "--max-tokens", "5", "--model", "gpt-4o",
                          "-m", "one two")
        assert result.stdout == "one two one two one\n"

    def test_token_from_the_environment(self, upstream):
        result = run_chat(upstream, "-m", "via env", token=None, env={"PROXY_TOKEN": "sk-good"})
        assert result.exit_code == 0
        assert result.stdout == "via env\n"

    def test_verbose_shows_request_and_usage_on_stderr(self, upstream):
        result = run_chat(upstream, "-v", "-m", "count these words")
        assert result.stdout == "count these words\n"
        assert '"stream_options"' in result.stderr
        assert "usage: prompt=8 completion=3 total=11" in result.stderr


class TestChatErrors:
    def test_missing_token_is_one_line_and_non_zero(self, upstream):
        result = run_chat(upstream, "-m", "hi", token=None, env={"PROXY_TOKEN": ""})
        assert result.exit_code != 0
        assert result.stderr.strip().splitlines() == [
            "Error: a proxy token is required: pass --token or set PROXY_TOKEN"
        ]

    def test_proxy_error_prints_the_openai_message(self, upstream):
        result = run_chat(upstream, "-m", "hi", token="sk-bad")
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            "Error: proxy returned 401: Incorrect API key provided."
        ]

    def test_unreachable_proxy(self):
        result = CliRunner().invoke(
            cli, ["chat", "--proxy", "http://127.0.0.1:9", "--token", "t", "-m", "hi"]
        )
        assert result.exit_code == 1
        assert "cannot talk to the proxy at http://127.0.0.1:9" in result.stderr


class TestChatInteractive:
    def test_keeps_history_until_exit(self, upstream):
        result = run_chat(upstream, "-v", "--no-stream", input="a b\nc\nexit\nnever sent\n")
        assert result.exit_code == 0
        assert "> a b\n" in result.stdout
        assert "> c\n" in result.stdout
        usages = [line for line in result.stderr.splitlines() if line.startswith("usage:")]
        # system prompt (5 words) + "a b"; then + assistant "a b" + "c"
        assert usages == [
            "usage: prompt=7 completion=2 total=9",
            "usage: prompt=10 completion=1 total=11",
        ]
        assert "never sent" not in result.stdout

    def test_end_of_input_ends_the_session(self, upstream):
        result = run_chat(upstream, input="")
        assert result.exit_code == 0
        assert result.stdout.startswith("Chatting with gpt-4.1-mini")


class TestMockCommand:
    def test_help_describes_hooks(self):
        result = CliRunner().invoke(cli, ["mock-openai", "--help"])
        assert result.exit_code == 0
        assert "X-Mock-" in result.output
        assert "--chunk-delay-ms" in result.output

    def test_serves_until_sigterm_and_exits_zero(self):
        proc = subprocess.Popen(
            [sys.executable, "-m", "llm_proxy", "mock-openai", "--port", "0", "--chunks", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        try:
            assert select.select([proc.stdout], [], [], 20)[0], "the mock did not announce itself"
            line = proc.stdout.readline().strip()
            assert line.startswith("mock OpenAI upstream listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                assert json.load(response) == {"status": "ok"}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
