"""Value parsers and the `Var` declaration that every settings section is built from."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "t", "true", "yes", "y", "on"}:
        return True
    if value in {"0", "f", "false", "no", "n", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (true/false), got {raw!r}")


def parse_duration(raw: str) -> float:
    """Go-style durations (`30s`, `1m30s`, `250ms`) or a plain number of seconds."""
    text = raw.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"expected a duration like 30s, 5m or 1h30m, got {raw!r}") from None
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {raw!r}")
    return seconds


def parse_size(raw: str) -> int:
    """Byte sizes: `1048576`, `10MB`, `64KiB`."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", raw)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size like 1048576, 64KB or 10MB, got {raw!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def parse_non_negative_int(raw: str) -> int:
    value = parse_int(raw)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def parse_positive_int(raw: str) -> int:
    value = parse_int(raw)
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def parse_encryption_key(raw: str) -> bytes | None:
    if not raw.strip():
        return None
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64 (generate one with: openssl rand -base64 32)") from None
    if len(key) != 32:
        raise ValueError(f"must decode to exactly 32 bytes, got {len(key)}")
    return key


@dataclass(frozen=True)
class Var:
    """One environment variable: where it lands, how it parses, its default and its doc."""

    env: str
    field: str
    parse: Callable[[str], Any]
    default: Any
    doc: str


def _load_section(cls: type[T], catalogue: tuple[Var, ...], env: Mapping[str, str],
                  problems: list[str]) -> T:
    values: dict[str, Any] = {}
    for var in catalogue:
        raw = env.get(var.env)
        if raw is None:
            values[var.field] = var.default
            continue
        try:
            values[var.field] = var.parse(raw)
        except ValueError as exc:
            problems.append(f"{var.env}: {exc}")
            values[var.field] = var.default
    return cls(**values)

