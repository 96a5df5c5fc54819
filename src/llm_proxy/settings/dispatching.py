"""Settings sections of the dispatcher and its sinks (`llm-proxy dispatcher`)."""

from __future__ import annotations

from dataclasses import dataclass

from llm_proxy.settings.values import (
    Var,
    parse_bool,
    parse_duration,
    parse_non_negative_int,
    parse_positive_int,
    parse_size,
    parse_str,
)


@dataclass(frozen=True)
class DispatcherSettings:
    service: str
    endpoint: str
    api_key: str
    buffer: int
    batch_size: int
    flush_interval: float
    max_retries: int
    backoff_base: float
    backoff_max: float
    send_timeout: float
    concurrency: int
    drain_timeout: float
    detach: bool
    health_addr: str
    pid_file: str
    log_file: str
    verbose: bool
    max_lag: int
    file_max_bytes: int
    file_backups: int


DISPATCHER_VARS: tuple[Var, ...] = (
    Var("DISPATCHER_SERVICE", "service", parse_str, "file",
        "Sink of `llm-proxy dispatcher`: file, lunary, helicone, cloudwatch."),
    Var("DISPATCHER_ENDPOINT", "endpoint", parse_str, "",
        "File path (file sink) or base URL of the service; overrides the sink's own URL variable."),
    Var("LLM_PROXY_API_KEY", "api_key", parse_str, "",
        "Key of the sink's service; overrides LUNARY_PUBLIC_KEY/HELICONE_API_KEY."),
    Var("DISPATCHER_BUFFER", "buffer", parse_positive_int, 1000,
        "Accepted for compatibility with the predecessor; no effect (the dispatcher reads Redis Streams)."),
    Var("DISPATCHER_BATCH_SIZE", "batch_size", parse_positive_int, 100, "Events per sink call."),
    Var("DISPATCHER_FLUSH_INTERVAL", "flush_interval", parse_duration, 1.0,
        "Longest time an event waits for its batch to fill before it is sent."),
    Var("DISPATCHER_MAX_RETRIES", "max_retries", parse_non_negative_int, 5,
        "Retries of a transient sink failure before the events go to the dead-letter stream."),
    Var("DISPATCHER_BACKOFF_BASE", "backoff_base", parse_duration, 1.0,
        "First retry delay (doubles each retry, with jitter)."),
    Var("DISPATCHER_BACKOFF_MAX", "backoff_max", parse_duration, 30.0,
        "Longest retry delay (a larger Retry-After still wins)."),
    Var("DISPATCHER_TIMEOUT", "send_timeout", parse_duration, 10.0,
        "Timeout of one HTTP/AWS call of a sink; keep it well under REDIS_STREAM_CLAIM_TIME."),
    Var("DISPATCHER_CONCURRENCY", "concurrency", parse_positive_int, 8,
        "Parallel requests of sinks that send one record per request (Helicone)."),
    Var("DISPATCHER_DRAIN_TIMEOUT", "drain_timeout", parse_duration, 10.0,
        "On SIGTERM, how long the in-flight batch may take; what is not confirmed by then stays unacknowledged."),
    Var("DISPATCHER_DETACH", "detach", parse_bool, False, "Run in the background (pid file and log file)."),
    Var("DISPATCHER_HEALTH_ADDR", "health_addr", parse_str, "",
        "host:port of the dispatcher's /health and /metrics (empty: not served)."),
    Var("DISPATCHER_PID_FILE", "pid_file", parse_str, "",
        "PID file of --detach (default data/dispatcher-<service>.pid)."),
    Var("DISPATCHER_LOG_FILE", "log_file", parse_str, "",
        "Log file of --detach (default data/dispatcher-<service>.log)."),
    Var("LLM_PROXY_DISPATCHER_VERBOSE", "verbose", parse_bool, False, "Also send response headers to the sink."),
    Var("DISPATCHER_MAX_LAG", "max_lag", parse_positive_int, 10000,
        "/health turns unhealthy above this many waiting events."),
    Var("DISPATCHER_FILE_MAX_BYTES", "file_max_bytes", parse_size, 0,
        "File sink: rotate the file when it would grow past this size (0: never)."),
    Var("DISPATCHER_FILE_BACKUPS", "file_backups", parse_non_negative_int, 5,
        "File sink: rotated files kept (.1 is the newest)."),
)


@dataclass(frozen=True)
class LunarySettings:
    url: str
    key: str


LUNARY_VARS: tuple[Var, ...] = (
    Var("LUNARY_API_URL", "url", parse_str, "https://api.lunary.ai",
        "Lunary API base URL (events go to /v1/runs/ingest)."),
    Var("LUNARY_PUBLIC_KEY", "key", parse_str, "", "Lunary project key."),
)


@dataclass(frozen=True)
class HeliconeSettings:
    url: str
    key: str


HELICONE_VARS: tuple[Var, ...] = (
    Var("HELICONE_API_URL", "url", parse_str, "https://api.worker.helicone.ai",
        "Helicone logger base URL (records go to /oai/v1/log or /custom/v1/log)."),
    Var("HELICONE_API_KEY", "key", parse_str, "", "Helicone API key."),
)


@dataclass(frozen=True)
class CloudWatchSettings:
    region: str
    log_group: str
    log_stream: str
    endpoint: str


CLOUDWATCH_VARS: tuple[Var, ...] = (
    Var("AWS_REGION", "region", parse_str, "us-east-1", "AWS region of CloudWatch Logs."),
    Var("CLOUDWATCH_LOG_GROUP", "log_group", parse_str, "/llm-proxy/events", "Log group (created if missing)."),
    Var("CLOUDWATCH_LOG_STREAM", "log_stream", parse_str, "",
        "Log stream (created if missing; default dispatcher-<hostname>)."),
    Var("CLOUDWATCH_ENDPOINT", "endpoint", parse_str, "",
        "Custom CloudWatch Logs endpoint URL (DISPATCHER_ENDPOINT also works)."),
)
