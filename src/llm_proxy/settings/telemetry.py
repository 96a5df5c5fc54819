"""Settings sections of the proxy's telemetry: metrics (`ENABLE_METRICS`, ...) and tracing (`OTEL_*`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm_proxy.settings.values import (
    Var,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_positive_int,
    parse_str,
)


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool
    path: str
    token: str
    project_labels: bool
    max_model_labels: int
    multiprocess_dir: str
    handlers: tuple[str, ...]


def parse_import_list(raw: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if not re.fullmatch(r"[\w.]+:[\w.]+", item):
            raise ValueError(f"expected module:function, got {item!r}")
    return items


METRICS_VARS: tuple[Var, ...] = (
    Var("ENABLE_METRICS", "enabled", parse_bool, True, "Serve /metrics and /metrics/prometheus."),
    Var("METRICS_PATH", "path", parse_str, "/metrics", "Path of the JSON metrics."),
    Var("METRICS_TOKEN", "token", parse_str, "", "When set, metrics require `Authorization: Bearer <token>`."),
    Var("METRICS_PROJECT_LABELS", "project_labels", parse_bool, False,
        "Add a `project` label to the request, token and cost counters (one series per project)."),
    Var("METRICS_MAX_MODEL_LABELS", "max_model_labels", parse_positive_int, 100,
        "Distinct `model` label values per worker; later models are counted as `other`."),
    Var("METRICS_MULTIPROCESS_DIR", "multiprocess_dir", parse_str, "",
        "Directory where workers share metric values (default with WORKERS>1: a directory in the system temp)."),
    Var("TELEMETRY_HANDLERS", "handlers", parse_import_list, (),
        "Comma-separated `module:function`s called with the telemetry registry at start-up (in every server worker "
        "and in the dispatcher) to attach handlers."),
)


@dataclass(frozen=True)
class TracingSettings:
    sdk_disabled: bool
    exporter: str
    endpoint: str
    traces_endpoint: str
    headers: str
    traces_headers: str
    timeout: float
    protocol: str
    service_name: str
    resource_attributes: str
    sampler: str
    sampler_arg: float
    semconv_opt_in: str
    capture_content: bool
    export_process: bool
    export_priority: str
    native_encoder: bool

    @property
    def enabled(self) -> bool:
        return not self.sdk_disabled and self.exporter == "otlp" and bool(self.endpoint or self.traces_endpoint)


def parse_ratio(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number between 0 and 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a number between 0 and 1, got {raw!r}")
    return value


def parse_milliseconds(raw: str) -> float:
    """OTel timeouts: a plain number is milliseconds (the spec's unit); `10s` works too."""
    text = raw.strip()
    return float(text) / 1000.0 if text.replace(".", "", 1).isdigit() else parse_duration(text)


TRACING_VARS: tuple[Var, ...] = (
    Var("OTEL_SDK_DISABLED", "sdk_disabled", parse_bool, False, "Turn tracing off whatever else is set."),
    Var("OTEL_TRACES_EXPORTER", "exporter", parse_choice("otlp", "none"), "otlp", "otlp, or none to turn tracing off."),
    Var("OTEL_EXPORTER_OTLP_ENDPOINT", "endpoint", parse_str, "",
        "OTLP/HTTP base URL (`/v1/traces` is appended); tracing is off unless this or the next is set."),
    Var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces_endpoint", parse_str, "", "Full OTLP/HTTP traces URL."),
    Var("OTEL_EXPORTER_OTLP_HEADERS", "headers", parse_str, "", "Export headers, `key=value,key2=value2`."),
    Var("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "traces_headers", parse_str, "", "Trace export headers (win)."),
    Var("OTEL_EXPORTER_OTLP_TIMEOUT", "timeout", parse_milliseconds, 10.0,
        "Export timeout in seconds here; in the variable a plain number is ms."),
    Var("OTEL_EXPORTER_OTLP_PROTOCOL", "protocol", parse_choice("http/protobuf"), "http/protobuf",
        "Only http/protobuf is supported."),
    Var("OTEL_SERVICE_NAME", "service_name", parse_str, "llm-proxy", "service.name of the spans."),
    Var("OTEL_RESOURCE_ATTRIBUTES", "resource_attributes", parse_str, "",
        "Extra resource attributes, `key=value,key2=value2`."),
    Var("OTEL_TRACES_SAMPLER", "sampler", parse_choice(
        "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio", "always_on", "always_off",
        "traceidratio"), "parentbased_always_on", "Sampler (OpenTelemetry names)."),
    Var("OTEL_TRACES_SAMPLER_ARG", "sampler_arg", parse_ratio, 1.0, "Ratio of the traceidratio samplers (0..1)."),
    Var("OTEL_SEMCONV_STABILITY_OPT_IN", "semconv_opt_in", parse_str, "",
        "`gen_ai_latest_experimental`: newest GenAI attribute names instead of v1.41's."),
    Var("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "capture_content", parse_bool, False,
        "Put prompt and completion messages on spans."),
    Var("LLM_PROXY_TRACE_EXPORT_PROCESS", "export_process", parse_bool, True,
        "Encode and post spans in one child process per worker (true) or in the worker itself (false)."),
    Var("LLM_PROXY_TRACE_EXPORT_PRIORITY", "export_priority", parse_choice("idle", "low", "normal"), "idle",
        "CPU priority of the exporter process: idle (runs only on CPU time nothing else wants, so export never "
        "slows requests; under sustained full load spans queue, then are dropped and counted), low (nice 10) "
        "or normal."),
    Var("LLM_PROXY_TRACE_NATIVE_ENCODER", "native_encoder", parse_bool, True,
        "Use the C extension built with the package: the worker packs call records for the exporter process, "
        "which encodes spans (same bytes as the pure-Python code, a fraction of the CPU); false, or where it "
        "was not built, the pure-Python code. Captured message content is always encoded in Python."),
)
