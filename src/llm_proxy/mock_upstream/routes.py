"""Request → reply, with no I/O: authentication, hooks, routing and the endpoint handlers.

Order of checks: `X-Mock-Echo-Headers` (answered without authentication, so header-rewrite
tests see exactly what arrived), `GET /health`, `Authorization: Bearer`, route (404),
`X-Mock-Status`, then the endpoint, whose malformed input is a 400.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from llm_proxy.errors import openai_error_body
from llm_proxy.mock_upstream import responses, streams
from llm_proxy.mock_upstream.hooks import Hooks, MockOptions, default_hooks, read_hooks
from llm_proxy.mock_upstream.responses import Call
from llm_proxy.mock_upstream.textgen import (
    RequestProblem,
    last_user_words,
    plan_reply,
    reply_limit,
    words_of,
)

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"
STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    """Lower-case names; a repeated header keeps its last value (`raw_headers` has them all)."""
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    hooked: bool = True
    """False when no `X-Mock-*` header came, so the server defaults apply unread."""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@dataclass(slots=True)
class Reply:
    """What to send; `frames` set means a chunked SSE stream of those frames."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    frames: list[bytes] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    latency: float = 0.0
    chunk_delay: float = 0.0
    drop_after: int | None = None
    gzip: bool = False


def error_reply(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> Reply:
    return Reply(status, openai_error_body(message, type_, code, param))


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(payload))


def problem_reply(problem: RequestProblem) -> Reply:
    return error_reply(400, problem.message, "invalid_request_error", None, problem.param)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise RequestProblem(
            "We could not parse the JSON body of your request. "
            "(HINT: send a JSON object with Content-Type: application/json.)"
        )
    return value


def new_call(body: dict[str, Any], seq: int, now: int) -> Call:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestProblem("you must provide a model parameter", "model")
    return Call(seq, now, model)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _stream(frames: list[bytes]) -> Reply:
    return Reply(200, content_type=SSE, frames=frames)


def chat(req: Request, hooks: Hooks, seq: int, now: int) -> Reply:
    body = parse_json(req.body)
    call = new_call(body, seq, now)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestProblem("'messages' must be a non-empty array.", "messages")
    limit = reply_limit(body, "max_completion_tokens", "max_tokens")
    plan = plan_reply(len(words_of(messages)), last_user_words(messages), limit, hooks.extras)
    if body.get("stream") is True:
        return _stream(streams.chat_stream(call, plan, hooks.chunks, _include_usage(body)))
    return json_reply(responses.chat_completion(call, plan))


def completions(req: Request, hooks: Hooks, seq: int, now: int) -> Reply:
    body = parse_json(req.body)
    call = new_call(body, seq, now)
    prompt = words_of(body.get("prompt"))
    plan = plan_reply(len(prompt), prompt, reply_limit(body, "max_tokens"), hooks.extras)
    if body.get("stream") is True:
        return _stream(streams.completion_stream(call, plan, hooks.chunks, _include_usage(body)))
    return json_reply(responses.text_completion(call, plan))


def responses_api(req: Request, hooks: Hooks, seq: int, now: int) -> Reply:
    body = parse_json(req.body)
    call = new_call(body, seq, now)
    given = body.get("input")
    prompt_tokens = len(words_of(body.get("instructions"))) + len(words_of(given))
    limit = reply_limit(body, "max_output_tokens")
    plan = plan_reply(prompt_tokens, last_user_words(given), limit, hooks.extras)
    if body.get("stream") is True:
        return _stream(streams.response_stream(call, plan, hooks.chunks, body))
    return json_reply(responses.response_object(call, plan, body))


def embeddings(req: Request, hooks: Hooks, seq: int, now: int) -> Reply:
    body = parse_json(req.body)
    return json_reply(responses.embeddings(new_call(body, seq, now), body))


def transcriptions(req: Request, hooks: Hooks, seq: int, now: int) -> Reply:
    text, payload = responses.transcription(req.body)
    if payload is None:
        return Reply(200, text.encode(), content_type="text/plain; charset=utf-8")
    return json_reply(payload)


def models(req: Request, hooks: Hooks, seq: int, now: int) -> Reply:
    return json_reply(responses.model_list())


def one_model(req: Request, hooks: Hooks, seq: int, now: int) -> Reply:
    model_id = unquote(req.path.removeprefix("/v1/models/"))
    model = responses.find_model(model_id)
    if model is None:
        return error_reply(
            404, f"The model '{model_id}' does not exist", "invalid_request_error",
            "model_not_found", "model",
        )
    return json_reply(model)


Handler = Callable[[Request, Hooks, int, int], Reply]
ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/chat/completions"): chat,
    ("POST", "/v1/completions"): completions,
    ("POST", "/v1/responses"): responses_api,
    ("POST", "/v1/embeddings"): embeddings,
    ("POST", "/v1/audio/transcriptions"): transcriptions,
    ("GET", "/v1/models"): models,
}


def find_route(method: str, path: str) -> Handler | None:
    handler = ROUTES.get((method, path.rstrip("/") or "/"))
    if handler is None and method == "GET" and path.startswith("/v1/models/"):
        return one_model
    return handler


def echo(req: Request) -> Reply:
    try:
        parsed: Any = orjson.loads(req.body) if req.body else None
    except orjson.JSONDecodeError:
        parsed = None
    return json_reply({
        "method": req.method,
        "target": req.target,
        "headers": req.headers,
        "header_list": [
            [name.decode("latin-1"), value.decode("utf-8", "replace")]
            for name, value in req.raw_headers
        ],
        "body": req.body.decode("utf-8", "replace"),
        "json": parsed,
    })


def auth_failure(authorization: str | None, api_key: str | None) -> Reply | None:
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return error_reply(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
        )
    if api_key is not None and not hmac.compare_digest(key.encode(), api_key.encode()):
        return error_reply(401, "Incorrect API key provided.", "invalid_request_error",
                           "invalid_api_key")
    return None


def _answer(req: Request, options: MockOptions, hooks: Hooks, seq: int, now: int) -> Reply:
    if hooks.echo:
        return echo(req)
    if req.method == "GET" and req.path == "/health":
        return json_reply({"status": "ok"})
    failure = auth_failure(req.headers.get("authorization"), options.api_key)
    return failure or _route(req, hooks, seq, now)


def _route(req: Request, hooks: Hooks, seq: int, now: int) -> Reply:
    handler = find_route(req.method, req.path)
    if handler is None:
        return error_reply(404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error")
    if hooks.status is not None:
        type_, code = STATUS_ERRORS.get(hooks.status, ("api_error", None))
        message = f"Mock upstream error {hooks.status} (requested by X-Mock-Status)"
        return error_reply(hooks.status, message, type_, code)
    try:
        return handler(req, hooks, seq, now)
    except RequestProblem as problem:
        return problem_reply(problem)


def handle(req: Request, options: MockOptions, seq: int, now: int) -> Reply:
    """The reply to one request; `seq` numbers ids (distinct per call), `now` is `created`."""
    try:
        hooks = read_hooks(req.headers, options) if req.hooked else default_hooks(options)
    except RequestProblem as problem:
        return problem_reply(problem)
    reply = _answer(req, options, hooks, seq, now)
    reply.latency = hooks.latency
    reply.chunk_delay = hooks.chunk_delay
    reply.drop_after = hooks.drop_after
    reply.gzip = hooks.gzip
    return reply
