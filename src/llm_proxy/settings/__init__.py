"""Every setting of llm-proxy, declared once: environment name, type, default and a one-line doc.

Precedence, highest first: command-line flag > process environment > `.env` file > default.
The CLI applies flags by writing them into the mapping handed to `load_settings`, and loads the
`.env` file without overriding variables that are already set. Nothing outside this package
reads `os.environ`. Parsers and `Var` live in `values.py`; the dispatcher's sections in
`dispatching.py`; metrics and tracing in `telemetry.py`; the proxy's other sections, the loader and
the reference generator here.

Parsing is strict: an invalid value is a start-up error naming the variable (the predecessor
silently fell back to defaults). `load_settings` collects every problem and raises one
`ConfigError` listing them all, one line each.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from llm_proxy.errors import ConfigError
from llm_proxy.settings.dispatching import (
    CLOUDWATCH_VARS as CLOUDWATCH_VARS,
)
from llm_proxy.settings.dispatching import (
    DISPATCHER_VARS as DISPATCHER_VARS,
)
from llm_proxy.settings.dispatching import (
    HELICONE_VARS as HELICONE_VARS,
)
from llm_proxy.settings.dispatching import (
    LUNARY_VARS as LUNARY_VARS,
)
from llm_proxy.settings.dispatching import (
    CloudWatchSettings as CloudWatchSettings,
)
from llm_proxy.settings.dispatching import (
    DispatcherSettings as DispatcherSettings,
)
from llm_proxy.settings.dispatching import (
    HeliconeSettings as HeliconeSettings,
)
from llm_proxy.settings.dispatching import (
    LunarySettings as LunarySettings,
)
from llm_proxy.settings.telemetry import (
    METRICS_VARS as METRICS_VARS,
)
from llm_proxy.settings.telemetry import (
    TRACING_VARS as TRACING_VARS,
)
from llm_proxy.settings.telemetry import (
    MetricsSettings as MetricsSettings,
)
from llm_proxy.settings.telemetry import (
    TracingSettings as TracingSettings,
)
from llm_proxy.settings.telemetry import (
    parse_import_list as parse_import_list,
)
from llm_proxy.settings.telemetry import (
    parse_milliseconds as parse_milliseconds,
)
from llm_proxy.settings.telemetry import (
    parse_ratio as parse_ratio,
)
from llm_proxy.settings.values import (
    Var as Var,
)
from llm_proxy.settings.values import (
    _load_section,
)
from llm_proxy.settings.values import (
    parse_bool as parse_bool,
)
from llm_proxy.settings.values import (
    parse_choice as parse_choice,
)
from llm_proxy.settings.values import (
    parse_duration as parse_duration,
)
from llm_proxy.settings.values import (
    parse_encryption_key as parse_encryption_key,
)
from llm_proxy.settings.values import (
    parse_int as parse_int,
)
from llm_proxy.settings.values import (
    parse_non_negative_int as parse_non_negative_int,
)
from llm_proxy.settings.values import (
    parse_positive_int as parse_positive_int,
)
from llm_proxy.settings.values import (
    parse_size as parse_size,
)
from llm_proxy.settings.values import (
    parse_str as parse_str,
)

T = TypeVar("T")

# --- sections ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerSettings:
    listen_addr: str
    management_token: str
    request_timeout: float
    max_request_size: int
    api_config_path: str
    default_api_provider: str
    openai_api_url: str
    enforce_project_active: bool
    token_cache_ttl: float
    token_cache_max: int
    api_key_cache_ttl: float
    api_key_cache_max: int
    shutdown_timeout: float
    pid_file: str
    trusted_proxy_headers: bool
    workers: int
    upstream_client: str
    breaker_threshold: int
    breaker_cooldown: float


SERVER_VARS: tuple[Var, ...] = (
    Var("LISTEN_ADDR", "listen_addr", parse_str, ":8080", "Address the server listens on (host:port or :port)."),
    Var("MANAGEMENT_TOKEN", "management_token", parse_str, "", "Bearer token of the management API (required)."),
    Var("REQUEST_TIMEOUT", "request_timeout", parse_duration, 120.0,
        "Default upstream timeout for non-streamed responses; a provider's timeouts.request overrides it."),
    Var("MAX_REQUEST_SIZE", "max_request_size", parse_size, 10 * 1024 * 1024,
        "Largest accepted request body; bigger bodies get 413."),
    Var("API_CONFIG_PATH", "api_config_path", parse_str, "./config/api_providers.yaml",
        "Provider file (YAML); when absent a built-in OpenAI provider is used."),
    Var("DEFAULT_API_PROVIDER", "default_api_provider", parse_str, "openai",
        "Provider used for /v1/* (falls back to the file's default_api)."),
    Var("OPENAI_API_URL", "openai_api_url", parse_str, "https://api.openai.com",
        "Base URL of OpenAI: the built-in provider, and ${OPENAI_API_URL} in the shipped provider file."),
    Var("LLM_PROXY_ENFORCE_PROJECT_ACTIVE", "enforce_project_active", parse_bool, True,
        "Reject calls of inactive projects with 403 project_inactive."),
    Var("LLM_PROXY_TOKEN_CACHE_TTL", "token_cache_ttl", parse_duration, 5.0,
        "How long a worker trusts a validated token before re-reading it (other workers' revocations)."),
    Var("LLM_PROXY_TOKEN_CACHE_MAX", "token_cache_max", parse_non_negative_int, 10000,
        "Maximum cached tokens per worker (0 disables the cache)."),
    Var("LLM_PROXY_API_KEY_CACHE_TTL", "api_key_cache_ttl", parse_duration, 30.0,
        "How long a worker caches a project's decrypted upstream key (0 disables)."),
    Var("LLM_PROXY_API_KEY_CACHE_MAX", "api_key_cache_max", parse_non_negative_int, 10000,
        "Maximum cached upstream keys per worker (0 disables)."),
    Var("SHUTDOWN_TIMEOUT", "shutdown_timeout", parse_duration, 30.0,
        "How long SIGTERM waits for in-flight requests before closing them."),
    Var("PID_FILE", "pid_file", parse_str, "tmp/server.pid", "PID file written by `server --daemon`."),
    Var("TRUST_PROXY_HEADERS", "trusted_proxy_headers", parse_bool, False,
        "Take the client IP from X-Forwarded-For/X-Real-IP (only behind a trusted load balancer)."),
    Var("WORKERS", "workers", parse_positive_int, 1, "Number of server worker processes."),
    Var("LLM_PROXY_UPSTREAM_CLIENT", "upstream_client", parse_choice("native", "aiohttp"), "native",
        "HTTP client for upstream calls: `native` (pooled HTTP/1.1 on httptools, cheaper per call) or `aiohttp`."),
    Var("CIRCUIT_BREAKER_THRESHOLD", "breaker_threshold", parse_positive_int, 5,
        "Consecutive upstream failures (transport errors, 502/503/504) that open the circuit breaker."),
    Var("CIRCUIT_BREAKER_COOLDOWN", "breaker_cooldown", parse_duration, 30.0,
        "How long the open breaker answers 503 before one probe call is let through."),
)


@dataclass(frozen=True)
class StorageSettings:
    db_driver: str
    database_path: str
    database_url: str
    pool_size: int
    max_idle_conns: int
    conn_max_lifetime: float
    auto_migrate: bool

    def url(self) -> str:
        """SQLAlchemy async URL for the configured driver."""
        if self.db_driver == "sqlite":
            if self.database_path == ":memory:":
                return "sqlite+aiosqlite:///:memory:"
            return f"sqlite+aiosqlite:///{self.database_path}"
        url = self.database_url
        for prefix, replacement in _ASYNC_URL_PREFIXES[self.db_driver]:
            if url.startswith(prefix):
                return replacement + url[len(prefix):]
        return url


_ASYNC_URL_PREFIXES = {
    "postgres": (("postgresql+asyncpg://", "postgresql+asyncpg://"),
                 ("postgresql://", "postgresql+asyncpg://"), ("postgres://", "postgresql+asyncpg://")),
    "mysql": (("mysql+aiomysql://", "mysql+aiomysql://"), ("mysql://", "mysql+aiomysql://"),
              ("mariadb://", "mysql+aiomysql://")),
}

STORAGE_VARS: tuple[Var, ...] = (
    Var("DB_DRIVER", "db_driver", parse_choice("sqlite", "postgres", "mysql"), "sqlite",
        "Database: sqlite, postgres or mysql (MariaDB too)."),
    Var("DATABASE_PATH", "database_path", parse_str, "./data/llm-proxy.db", "SQLite file (directory is created)."),
    Var("DATABASE_URL", "database_url", parse_str, "",
        "PostgreSQL/MySQL URL, e.g. postgresql://user@127.0.0.1:5432/db or mysql://root@127.0.0.1:3306/db."),
    Var("DATABASE_POOL_SIZE", "pool_size", parse_positive_int, 10, "Connection pool size."),
    Var("DATABASE_MAX_IDLE_CONNS", "max_idle_conns", parse_non_negative_int, 5, "Extra connections above the pool."),
    Var("DATABASE_CONN_MAX_LIFETIME", "conn_max_lifetime", parse_duration, 3600.0, "Recycle connections after this."),
    Var("DATABASE_AUTO_MIGRATE", "auto_migrate", parse_bool, True, "Apply pending migrations at server start-up."),
)


@dataclass(frozen=True)
class SecuritySettings:
    encryption_key: bytes | None
    require_encryption_key: bool


SECURITY_VARS: tuple[Var, ...] = (
    Var("ENCRYPTION_KEY", "encryption_key", parse_encryption_key, None,
        "Base64 of 32 bytes; upstream API keys are stored AES-256-GCM encrypted with it."),
    Var("REQUIRE_ENCRYPTION_KEY", "require_encryption_key", parse_bool, False,
        "Refuse to start without ENCRYPTION_KEY."),
)


@dataclass(frozen=True)
class LogSettings:
    level: str
    format: str
    file: str


LOG_VARS: tuple[Var, ...] = (
    Var("LOG_LEVEL", "level", parse_choice("debug", "info", "warn", "warning", "error"), "info", "Log level."),
    Var("LOG_FORMAT", "format", parse_choice("json", "console", "text"), "json",
        "json (one object per line) or console/text (readable)."),
    Var("LOG_FILE", "file", parse_str, "", "Append logs to this file instead of stderr."),
)


@dataclass(frozen=True)
class AuditSettings:
    enabled: bool
    log_file: str
    create_dir: bool
    store_in_db: bool


AUDIT_VARS: tuple[Var, ...] = (
    Var("AUDIT_ENABLED", "enabled", parse_bool, True, "Record management actions and proxy denials."),
    Var("AUDIT_LOG_FILE", "log_file", parse_str, "./data/audit.log", "JSONL audit file (empty: no file)."),
    Var("AUDIT_CREATE_DIR", "create_dir", parse_bool, True, "Create the audit file's directory."),
    Var("AUDIT_STORE_IN_DB", "store_in_db", parse_bool, True, "Also store audit events in the database."),
)


@dataclass(frozen=True)
class UsageSettings:
    buffer_size: int
    flush_interval: float
    cache_stats_buffer_size: int


USAGE_VARS: tuple[Var, ...] = (
    Var("USAGE_STATS_BUFFER_SIZE", "buffer_size", parse_positive_int, 1000,
        "Flush token usage counters after this many requests."),
    Var("USAGE_STATS_FLUSH_INTERVAL", "flush_interval", parse_duration, 5.0,
        "Flush token usage counters at least this often."),
    Var("CACHE_STATS_BUFFER_SIZE", "cache_stats_buffer_size", parse_positive_int, 1000,
        "Flush cache-hit counters after this many hits."),
)


@dataclass(frozen=True)
class SpendSettings:
    enabled: bool
    flush_interval: float


SPEND_VARS: tuple[Var, ...] = (
    Var("SPEND_TRACKING", "enabled", parse_bool, True,
        "Count each call's cost per project and token: enforce max_budget, send cost_alert_threshold alerts."),
    Var("SPEND_FLUSH_INTERVAL", "flush_interval", parse_duration, 1.0,
        "How often each worker writes its spend and re-reads the totals of budgeted projects and tokens."),
)


@dataclass(frozen=True)
class ObservabilitySettings:
    enabled: bool
    buffer_size: int
    max_request_body_bytes: int
    max_response_body_bytes: int
    event_bus: str
    file_event_log: str
    spool_dir: str
    spool_max_bytes: int
    client_ip: bool


OBSERVABILITY_VARS: tuple[Var, ...] = (
    Var("OBSERVABILITY_ENABLED", "enabled", parse_bool, True, "Turn every proxied call into an event."),
    Var("OBSERVABILITY_BUFFER_SIZE", "buffer_size", parse_positive_int, 1000,
        "Per-subscriber queue of the in-memory bus; publisher queue of the Redis bus."),
    Var("OBSERVABILITY_MAX_REQUEST_BODY_BYTES", "max_request_body_bytes", parse_positive_int, 65536,
        "Request body bytes kept in an event."),
    Var("OBSERVABILITY_MAX_RESPONSE_BODY_BYTES", "max_response_body_bytes", parse_positive_int, 262144,
        "Response body bytes kept in an event."),
    Var("LLM_PROXY_EVENT_BUS", "event_bus", parse_choice("in-memory", "memory", "redis-streams", "redis"),
        "in-memory", "Event bus: in-memory (one process) or redis-streams (alias: redis)."),
    Var("FILE_EVENT_LOG", "file_event_log", parse_str, "", "Append every event as a JSON line to this file."),
    Var("EVENT_SPOOL_DIR", "spool_dir", parse_str, "./data/spool",
        "Where events wait on disk while Redis is unreachable."),
    Var("EVENT_SPOOL_MAX_BYTES", "spool_max_bytes", parse_size, 256 * 1024 * 1024,
        "Bound of the spool, per process (each worker has its own spool slot)."),
    Var("OBSERVABILITY_CAPTURE_CLIENT_IP", "client_ip", parse_bool, True, "Put the client IP in events."),
)


@dataclass(frozen=True)
class RedisSettings:
    addr: str
    db: int
    url: str
    password: str
    tls: bool
    stream_key: str
    consumer_group: str
    consumer_name: str
    stream_max_len: int
    block_time: float
    claim_time: float
    batch_size: int
    max_deliveries: int
    dead_letter_key: str

    def connection_url(self) -> str:
        if self.url:
            return self.url
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}{self.addr}/{self.db}"


REDIS_VARS: tuple[Var, ...] = (
    Var("REDIS_ADDR", "addr", parse_str, "localhost:6379", "Redis host:port."),
    Var("REDIS_DB", "db", parse_non_negative_int, 0, "Redis database index."),
    Var("REDIS_URL", "url", parse_str, "", "Full Redis URL (redis:// or rediss://); overrides REDIS_ADDR/DB."),
    Var("REDIS_PASSWORD", "password", parse_str, "", "Redis password."),
    Var("REDIS_TLS", "tls", parse_bool, False, "Connect to Redis over TLS."),
    Var("REDIS_STREAM_KEY", "stream_key", parse_str, "llm-proxy-events", "Stream of events."),
    Var("REDIS_CONSUMER_GROUP", "consumer_group", parse_str, "", "Consumer group (dispatcher default: per service)."),
    Var("REDIS_CONSUMER_NAME", "consumer_name", parse_str, "", "Consumer name (default: host and pid)."),
    Var("REDIS_STREAM_MAX_LEN", "stream_max_len", parse_non_negative_int, 100000,
        "XADD MAXLEN ~ (0: unbounded). Keep it above the backlog dispatchers may fall behind by: "
        "Redis trims the oldest entries whether or not they were read."),
    Var("REDIS_STREAM_BLOCK_TIME", "block_time", parse_duration, 5.0, "XREADGROUP BLOCK time."),
    Var("REDIS_STREAM_CLAIM_TIME", "claim_time", parse_duration, 30.0,
        "Idle time after which another consumer's pending message is claimed."),
    Var("REDIS_STREAM_BATCH_SIZE", "batch_size", parse_positive_int, 100, "Messages per read."),
    Var("REDIS_STREAM_MAX_DELIVERIES", "max_deliveries", parse_positive_int, 5,
        "Deliveries after which a message goes to the dead-letter stream."),
    Var("REDIS_DEAD_LETTER_KEY", "dead_letter_key", parse_str, "llm-proxy-events-dead",
        "Dead-letter stream."),
)


def parse_positive_duration(raw: str) -> float:
    value = parse_duration(raw)
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool
    backend: str
    stream_responses: bool
    default_ttl: float
    max_object_bytes: int
    max_memory_bytes: int
    redis_url: str
    key_prefix: str
    pool_size: int
    timeout: float
    scan_count: int

    def redis_connection_url(self, redis: RedisSettings) -> str:
        return self.redis_url or redis.connection_url()


CACHE_VARS: tuple[Var, ...] = (
    Var("HTTP_CACHE_ENABLED", "enabled", parse_bool, True,
        "Cache upstream responses (RFC 9111 rules, isolated per project)."),
    Var("HTTP_CACHE_BACKEND", "backend", parse_choice("in-memory", "memory", "redis"), "in-memory",
        "Where entries live: in-memory (per worker process) or redis (shared by every instance)."),
    Var("HTTP_CACHE_STREAM_RESPONSES", "stream_responses", parse_bool, False,
        "Also cache complete SSE streams (the client still opts in with Cache-Control)."),
    Var("HTTP_CACHE_DEFAULT_TTL", "default_ttl", parse_duration, 300.0,
        "Lifetime of a `public` upstream response that states none (0: such responses are not stored)."),
    Var("HTTP_CACHE_MAX_OBJECT_BYTES", "max_object_bytes", parse_size, 1024 * 1024,
        "Largest response body stored; bigger responses pass through uncached."),
    Var("HTTP_CACHE_MAX_MEMORY_BYTES", "max_memory_bytes", parse_size, 64 * 1024 * 1024,
        "Bound of the in-memory cache per worker; least recently used entries are evicted."),
    Var("REDIS_CACHE_URL", "redis_url", parse_str, "",
        "Redis URL of the cache (default: the REDIS_URL, or REDIS_ADDR and REDIS_DB, connection)."),
    Var("REDIS_CACHE_KEY_PREFIX", "key_prefix", parse_str, "llmproxy:cache:", "Prefix of every cache key in Redis."),
    Var("REDIS_CACHE_POOL_SIZE", "pool_size", parse_positive_int, 50, "Connections per worker to the cache Redis."),
    Var("REDIS_CACHE_TIMEOUT", "timeout", parse_positive_duration, 0.1,
        "Deadline of one Redis cache call; past it (or while Redis is down) requests bypass the cache."),
    Var("REDIS_SCAN_COUNT", "scan_count", parse_positive_int, 2048, "SCAN batch size of cache purges and stats."),
)



@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    storage: StorageSettings
    security: SecuritySettings
    log: LogSettings
    audit: AuditSettings
    usage: UsageSettings
    spend: SpendSettings
    observability: ObservabilitySettings
    redis: RedisSettings
    metrics: MetricsSettings
    tracing: TracingSettings
    cache: CacheSettings
    dispatcher: DispatcherSettings
    lunary: LunarySettings
    helicone: HeliconeSettings
    cloudwatch: CloudWatchSettings
    environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """The variables these settings were read from, for `${VAR}` references in the provider file."""


SECTIONS: tuple[tuple[str, type[Any], tuple[Var, ...]], ...] = (
    ("server", ServerSettings, SERVER_VARS),
    ("storage", StorageSettings, STORAGE_VARS),
    ("security", SecuritySettings, SECURITY_VARS),
    ("log", LogSettings, LOG_VARS),
    ("audit", AuditSettings, AUDIT_VARS),
    ("usage", UsageSettings, USAGE_VARS),
    ("spend", SpendSettings, SPEND_VARS),
    ("observability", ObservabilitySettings, OBSERVABILITY_VARS),
    ("redis", RedisSettings, REDIS_VARS),
    ("metrics", MetricsSettings, METRICS_VARS),
    ("tracing", TracingSettings, TRACING_VARS),
    ("cache", CacheSettings, CACHE_VARS),
    ("dispatcher", DispatcherSettings, DISPATCHER_VARS),
    ("lunary", LunarySettings, LUNARY_VARS),
    ("helicone", HeliconeSettings, HELICONE_VARS),
    ("cloudwatch", CloudWatchSettings, CLOUDWATCH_VARS),
)


def _cross_checks(settings: Settings, problems: list[str], require_management_token: bool) -> None:
    if require_management_token and not settings.server.management_token:
        problems.append("MANAGEMENT_TOKEN: required (the bearer token of the management API)")
    if settings.security.require_encryption_key and settings.security.encryption_key is None:
        problems.append("ENCRYPTION_KEY: required because REQUIRE_ENCRYPTION_KEY=true")
    if settings.storage.db_driver != "sqlite" and not settings.storage.database_url:
        problems.append(f"DATABASE_URL: required when DB_DRIVER={settings.storage.db_driver}")
    try:
        split_listen_addr(settings.server.listen_addr)
    except ValueError as exc:
        problems.append(f"LISTEN_ADDR: {exc}")


def load_settings(env: Mapping[str, str] | None = None, *, require_management_token: bool = True) -> Settings:
    """Build the settings from `env` (default: the process environment); raise ConfigError."""
    source = os.environ if env is None else env
    problems: list[str] = []
    sections = {name: _load_section(cls, cat, source, problems) for name, cls, cat in SECTIONS}
    settings = Settings(**sections, environment=dict(source))
    _cross_checks(settings, problems, require_management_token)
    if problems:
        raise ConfigError(problems)
    return settings


def split_listen_addr(addr: str) -> tuple[str, int]:
    """`:8080` → ("0.0.0.0", 8080); `127.0.0.1:9000` → ("127.0.0.1", 9000); `[::1]:80` too."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected host:port or :port, got {addr!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def load_dotenv(path: str, env: dict[str, str]) -> None:
    """Read KEY=VALUE lines from `path` into `env` without overriding keys already present."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if not text or text.startswith("#") or "=" not in text:
                continue
            key, _, value = text.removeprefix("export ").partition("=")
            value = value.strip().strip("'\"")
            env.setdefault(key.strip(), value)


def process_environment() -> dict[str, str]:
    """A copy of the process environment, for the CLI to layer `.env` and flags onto."""
    return dict(os.environ)


def catalogue_markdown() -> str:
    """The configuration reference, generated from the declarations above (docs/configuration.md)."""
    lines = ["# Configuration", "", "Generated from `src/llm_proxy/settings.py`; "
             "precedence: flag > environment > `.env` > default.", ""]
    for name, cls, catalogue in SECTIONS:
        lines += [f"## {name}", "", "| variable | default | meaning |", "|---|---|---|"]
        for var in catalogue:
            default = "(unset)" if var.default in (None, "", ()) else var.default
            if isinstance(default, bool):
                default = str(default).lower()
            lines.append(f"| `{var.env}` | `{default}` | {var.doc} |")
        lines.append("")
        assert {f.name for f in fields(cls)} == {v.field for v in catalogue}, name
    return "\n".join(lines)


def export_environment(env: Mapping[str, str]) -> None:
    """Make `env` the process environment, for worker processes and `${VAR}` references."""
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
