"""`llm-proxy chat`: a small chat client that talks to llm-proxy's chat completions endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import click

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
EXIT_WORDS = frozenset({"exit", "quit"})


class ChatError(Exception):
    """A failure to show as one line before exiting non-zero."""


@dataclass(frozen=True, slots=True)
class ChatConfig:
    proxy: str
    token: str
    model: str
    temperature: float
    max_tokens: int
    system: str
    verbose: bool
    stream: bool


def _note(text: str) -> None:
    click.secho(text, fg="bright_black", err=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def message_of(body: Any) -> str | None:
    """`error.message` of an OpenAI error body (or `error` when it is a plain string)."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return _one_line(message) if isinstance(message, str) and message.strip() else None


def error_message(status: int, text: str) -> str:
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = None
    return f"proxy returned {status}: {message_of(body) or _one_line(text[:200]) or 'no details'}"


class ChatClient:
    """Keeps the conversation; `ask` sends it and returns the reply, passing text to `emit`."""

    def __init__(self, config: ChatConfig, emit: Callable[[str], None]) -> None:
        self.config = config
        self._emit = emit
        self.emitted = False
        self.history: list[dict[str, str]] = []
        if config.system:
            self.history.append({"role": "system", "content": config.system})
        self._session: aiohttp.ClientSession | None = None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": self.history,
            "temperature": self.config.temperature,
            "stream": self.config.stream,
        }
        if self.config.max_tokens:
            body["max_tokens"] = self.config.max_tokens
        if self.config.stream and self.config.verbose:
            body["stream_options"] = {"include_usage": True}
        return body

    def emit(self, text: str) -> None:
        self.emitted = True
        self._emit(text)

    async def ask(self, text: str) -> str:
        self.emitted = False
        self.history.append({"role": "user", "content": text})
        try:
            reply = await self._exchange(self.payload())
        except BaseException:
            self.history.pop()
            raise
        self.history.append({"role": "assistant", "content": reply})
        return reply

    async def _exchange(self, payload: dict[str, Any]) -> str:
        if self.config.verbose:
            _note(json.dumps(payload, indent=2))
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        url = self.config.proxy.rstrip("/") + "/v1/chat/completions"
        headers = {"Authorization": f"Bearer {self.config.token}"}
        try:
            async with self._session.post(url, json=payload, headers=headers) as response:
                if response.status >= 400:
                    raise ChatError(error_message(response.status, await response.text()))
                if self.config.stream:
                    return await self._read_stream(response)
                return self._read_body(await response.text())
        except aiohttp.ClientError as exc:
            raise ChatError(f"cannot talk to the proxy at {self.config.proxy}: {exc}") from exc
        except TimeoutError as exc:
            raise ChatError(f"the proxy at {self.config.proxy} did not answer in time") from exc

    def _read_body(self, text: str) -> str:
        body = _decode(text)
        self._show_usage(body.get("usage"))
        choices = body.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content") or ""
        self.emit(content)
        return str(content)

    async def _read_stream(self, response: aiohttp.ClientResponse) -> str:
        parts: list[str] = []
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            chunk = _decode(data)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    parts.append(piece)
                    self.emit(piece)
            self._show_usage(chunk.get("usage"))
        return "".join(parts)

    def _show_usage(self, usage: Any) -> None:
        if self.config.verbose and isinstance(usage, dict):
            _note(
                f"usage: prompt={usage.get('prompt_tokens')} "
                f"completion={usage.get('completion_tokens')} total={usage.get('total_tokens')}"
            )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _decode(text: str) -> dict[str, Any]:
    """A JSON object from the proxy; an `error` member (also inside a stream) becomes ChatError."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ChatError(f"the proxy sent something that is not JSON: {text[:80]!r}") from exc
    if not isinstance(value, dict):
        raise ChatError(f"the proxy sent an unexpected reply: {text[:80]!r}")
    if "error" in value:
        raise ChatError(f"proxy sent an error: {message_of(value) or 'no details'}")
    return value


def _emit(text: str) -> None:
    click.echo(text, nl=False)


def _answer(runner: asyncio.Runner, client: ChatClient, text: str) -> None:
    try:
        runner.run(client.ask(text))
    except ChatError:
        if client.emitted:
            click.echo()
        raise
    click.echo()


def _repl(runner: asyncio.Runner, client: ChatClient) -> None:
    with contextlib.suppress(ImportError):
        importlib.import_module("readline")
    config = client.config
    click.echo(f"Chatting with {config.model} through {config.proxy}; 'exit', 'quit' or Ctrl-D ends.")
    while True:
        try:
            text = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if text.lower() in EXIT_WORDS:
            return
        if text:
            _answer(runner, client, text)


@click.command("chat")
@click.option("--proxy", envvar="PROXY_URL", default="http://localhost:8080", show_default=True,
              help="Base URL of llm-proxy [env PROXY_URL].")
@click.option("--token", envvar="PROXY_TOKEN", default=None,
              help="Project token issued by llm-proxy (required) [env PROXY_TOKEN].")
@click.option("--model", envvar="MODEL", default="gpt-4.1-mini", show_default=True,
              help="Model to ask [env MODEL].")
@click.option("--temperature", envvar="TEMPERATURE", type=float, default=0.7, show_default=True,
              help="Sampling temperature [env TEMPERATURE].")
@click.option("--max-tokens", envvar="MAX_TOKENS", type=click.IntRange(min=0), default=0,
              show_default=True, help="Reply length limit; 0 leaves it out [env MAX_TOKENS].")
@click.option("--system", envvar="SYSTEM_PROMPT", default="You are a helpful assistant.",
              show_default=True, help="System prompt; empty for none [env SYSTEM_PROMPT].")
@click.option("-v", "--verbose", envvar="VERBOSE", is_flag=True,
              help="Show each request and the token usage [env VERBOSE].")
@click.option("--stream/--no-stream", envvar="USE_STREAMING", default=True, show_default=True,
              help="Print the reply as it arrives [env USE_STREAMING].")
@click.option("-m", "--message", default=None,
              help="Send this one message, print the reply and exit (no prompt).")
def chat(
    proxy: str, token: str | None, model: str, temperature: float, max_tokens: int,
    system: str, verbose: bool, stream: bool, message: str | None,
) -> None:
    """Chat with a model through llm-proxy, keeping the conversation history.

    Without --message it reads lines from the terminal until 'exit', 'quit' or Ctrl-D.
    A proxy error is printed on one line and ends the command with a non-zero status.
    """
    if not token:
        raise click.ClickException("a proxy token is required: pass --token or set PROXY_TOKEN")
    config = ChatConfig(proxy, token, model, temperature, max_tokens, system, verbose, stream)
    try:
        with asyncio.Runner() as runner:
            client = ChatClient(config, _emit)
            try:
                if message is not None:
                    _answer(runner, client, message)
                else:
                    _repl(runner, client)
            finally:
                runner.run(client.aclose())
    except ChatError as exc:
        raise click.ClickException(str(exc)) from None
