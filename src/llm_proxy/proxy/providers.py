"""The provider file (`config/api_providers.yaml`): which upstreams exist and what they allow.

Format (the predecessor's, plus `timeouts.connect` and an optional `auth` block):

    default_api: openai
    apis:
      openai:
        base_url: ${OPENAI_API_URL:-https://api.openai.com}
        allowed_endpoints: [/v1/chat/completions, /v1/models]
        allowed_methods: [GET, POST]
        timeouts: {request: 120s, response_header: 30s, idle_connection: 90s, connect: 10s}
        connection: {max_idle_conns: 100, max_idle_conns_per_host: 20}
        param_whitelist: {model: [gpt-4o, gpt-4o-*]}
        allowed_origins: [https://app.example.com]
        required_headers: [origin]
        auth: {header: Authorization, scheme: Bearer}

`${VAR}` and `${VAR:-default}` are replaced from the environment handed to the loader. A missing
file means the built-in OpenAI provider; a file that exists but is invalid is a start-up error
listing every problem (the predecessor silently fell back to the default).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from llm_proxy.errors import ConfigError
from llm_proxy.settings import ServerSettings, parse_duration

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

DEFAULT_ENDPOINTS = (
    "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/models",
    "/v1/files", "/v1/images/generations", "/v1/images/edits", "/v1/images/variations",
    "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech", "/v1/moderations",
    "/v1/threads", "/v1/assistants", "/v1/batches", "/v1/fine_tuning", "/v1/vector_stores",
)


@dataclass(frozen=True)
class Timeouts:
    request: float
    """Deadline of a non-streamed response; for streams, the longest silence between chunks."""
    response_header: float
    """Deadline for the upstream's status line and headers."""
    idle_connection: float
    """How long a pooled keep-alive connection may sit unused."""
    connect: float


@dataclass(frozen=True)
class AuthStyle:
    header: str = "Authorization"
    scheme: str = "Bearer"

    def value(self, key: str) -> str:
        return f"{self.scheme} {key}" if self.scheme else key


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    allowed_endpoints: tuple[str, ...]
    allowed_methods: frozenset[str]
    timeouts: Timeouts
    max_connections: int
    max_connections_per_host: int
    param_whitelist: dict[str, tuple[str, ...]] = field(default_factory=dict)
    allowed_origins: frozenset[str] = frozenset()
    origin_required: bool = False
    auth: AuthStyle = AuthStyle()
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderConfig:
    providers: dict[str, Provider]
    default: str
    source: str
    """The file it came from, or "built-in"."""

    @property
    def active(self) -> Provider:
        return self.providers[self.default]


def builtin_provider(server: ServerSettings) -> Provider:
    return Provider(
        name="openai",
        base_url=server.openai_api_url.rstrip("/"),
        allowed_endpoints=DEFAULT_ENDPOINTS,
        allowed_methods=frozenset({"GET", "POST", "DELETE"}),
        timeouts=Timeouts(request=server.request_timeout, response_header=60.0,
                          idle_connection=90.0, connect=10.0),
        max_connections=100,
        max_connections_per_host=100,
    )


def load_providers(server: ServerSettings, env: Mapping[str, str] | None = None) -> ProviderConfig:
    """Load the provider file named by API_CONFIG_PATH, or the built-in OpenAI provider."""
    path = server.api_config_path
    if not path or not os.path.isfile(path):
        provider = builtin_provider(server)
        return ProviderConfig({"openai": provider}, "openai", "built-in")
    try:
        with open(path, encoding="utf-8") as handle:
            text = _interpolate(handle.read(), os.environ if env is None else env)
        document = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read provider file: {exc}".replace("\n", " ")]) from exc
    return parse_providers(document, server, source=path)


def _interpolate(text: str, env: Mapping[str, str]) -> str:
    return _ENV_REF.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def parse_providers(document: Any, server: ServerSettings, *, source: str) -> ProviderConfig:
    problems: list[str] = []
    if not isinstance(document, dict) or not isinstance(document.get("apis"), dict) or not document["apis"]:
        raise ConfigError([f"{source}: expected a mapping with a non-empty 'apis' section"])
    providers: dict[str, Provider] = {}
    for name, raw in document["apis"].items():
        provider = _parse_provider(str(name), raw, server, problems, f"{source}: apis.{name}")
        if provider is not None:
            providers[str(name)] = provider
    default = _choose_default(document, server, providers, problems, source)
    if problems:
        raise ConfigError(problems)
    return ProviderConfig(providers, default, source)


def _choose_default(document: dict[str, Any], server: ServerSettings, providers: dict[str, Provider],
                    problems: list[str], source: str) -> str:
    file_default = document.get("default_api")
    if file_default is not None and str(file_default) not in document["apis"]:
        problems.append(f"{source}: default_api {file_default!r} is not defined under apis")
    if server.default_api_provider in providers:
        return server.default_api_provider
    if file_default is not None and str(file_default) in providers:
        return str(file_default)
    if not problems:
        problems.append(f"{source}: DEFAULT_API_PROVIDER {server.default_api_provider!r} is not defined "
                        f"and the file has no valid default_api (defined: {', '.join(sorted(providers))})")
    return ""


def _parse_provider(name: str, raw: Any, server: ServerSettings, problems: list[str],
                    where: str) -> Provider | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping")
        return None
    before = len(problems)
    base_url = str(raw.get("base_url") or "").rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        problems.append(f"{where}.base_url: expected an http(s) URL, got {raw.get('base_url')!r}")
    endpoints = _string_list(raw.get("allowed_endpoints"), f"{where}.allowed_endpoints", problems)
    methods = _string_list(raw.get("allowed_methods"), f"{where}.allowed_methods", problems)
    timeouts = _parse_timeouts(raw.get("timeouts") or {}, server, problems, f"{where}.timeouts")
    whitelist = _parse_whitelist(raw.get("param_whitelist") or {}, problems, f"{where}.param_whitelist")
    origins = _string_list(raw.get("allowed_origins") or [], f"{where}.allowed_origins", problems,
                           required=False)
    required = {h.lower() for h in _string_list(raw.get("required_headers") or [],
                                                 f"{where}.required_headers", problems, required=False)}
    connection = raw.get("connection") or {}
    auth_raw = raw.get("auth") or {}
    headers_raw = raw.get("headers") or {}
    if not isinstance(connection, dict) or not isinstance(auth_raw, dict):
        problems.append(f"{where}: connection and auth must be mappings")
    if len(problems) != before:
        return None
    return Provider(
        name=name,
        base_url=f"{parts.scheme}://{parts.netloc}",
        allowed_endpoints=tuple(endpoints),
        allowed_methods=frozenset(m.upper() for m in methods),
        timeouts=timeouts,
        max_connections=int(connection.get("max_idle_conns", 100) or 100),
        max_connections_per_host=int(connection.get("max_idle_conns_per_host", 100) or 100),
        param_whitelist=whitelist,
        allowed_origins=frozenset(origins),
        origin_required="origin" in required,
        auth=AuthStyle(str(auth_raw.get("header", "Authorization")), str(auth_raw.get("scheme", "Bearer"))),
        extra_headers={str(k): str(v) for k, v in headers_raw.items()} if isinstance(headers_raw, dict) else {},
    )


def _string_list(raw: Any, where: str, problems: list[str], *, required: bool = True) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        problems.append(f"{where}: expected a list of strings")
        return []
    if required and not raw:
        problems.append(f"{where}: must not be empty")
    return list(raw)


def _parse_timeouts(raw: Any, server: ServerSettings, problems: list[str], where: str) -> Timeouts:
    defaults = {"request": server.request_timeout, "response_header": 60.0,
                "idle_connection": 90.0, "connect": 10.0}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping")
        raw = {}
    values = dict(defaults)
    for key in ("request", "response_header", "idle_connection", "connect"):
        if key in raw:
            try:
                values[key] = parse_duration(str(raw[key]))
            except ValueError as exc:
                problems.append(f"{where}.{key}: {exc}")
    return Timeouts(**values)


def _parse_whitelist(raw: Any, problems: list[str], where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping of parameter to list of patterns")
        return {}
    result: dict[str, tuple[str, ...]] = {}
    for param, patterns in raw.items():
        result[str(param)] = tuple(_string_list(patterns, f"{where}.{param}", problems))
    return result
