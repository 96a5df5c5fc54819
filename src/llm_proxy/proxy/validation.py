"""Request checks that run before authentication, compiled once from a provider.

Order (the predecessor's): method → endpoint → parameter whitelist → origin. So an
unauthenticated caller learns about 405/404/400/403 before 401, and rejected calls consume no
quota.
"""

from __future__ import annotations

import re
from typing import Any

from llm_proxy.errors import ProxyError
from llm_proxy.proxy.providers import Provider


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """POSIX-style glob: `*` and `?` never match `/`; `[...]` classes (with `!` negation)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def param_text(value: Any) -> str:
    """The predecessor's stringification (Go `%v`) of a JSON value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if value is None:
        return "<nil>"
    return str(value)


class RequestValidator:
    def __init__(self, provider: Provider) -> None:
        self.allowed_methods = provider.allowed_methods
        self.allowed_endpoints = provider.allowed_endpoints
        self.allowed_origins = provider.allowed_origins
        self.origin_required = provider.origin_required
        self.whitelist = {
            param: (patterns, tuple(glob_to_regex(p) for p in patterns))
            for param, patterns in provider.param_whitelist.items()
        }
        self._path_ok: dict[str, bool] = {}

    @property
    def needs_json(self) -> bool:
        return bool(self.whitelist)

    def check_route(self, method: str, path: str) -> None:
        if method not in self.allowed_methods:
            raise ProxyError(405, f"Method not allowed: {method}", "method_not_allowed",
                             headers={"Allow": ", ".join(sorted(self.allowed_methods))})
        allowed = self._path_ok.get(path)
        if allowed is None:
            allowed = any(_endpoint_matches(path, e) for e in self.allowed_endpoints)
            if len(self._path_ok) < 4096:
                self._path_ok[path] = allowed
        if not allowed:
            raise ProxyError(404, f"Endpoint not found: {path}", "endpoint_not_found")

    def check_params(self, body: Any) -> None:
        if not self.whitelist or not isinstance(body, dict):
            return
        for param, (patterns, compiled) in self.whitelist.items():
            if param not in body:
                continue
            text = param_text(body[param])
            if not any(regex.match(text) for regex in compiled):
                raise ProxyError(
                    400,
                    f"Parameter '{param}' value '{text}' is not allowed. "
                    f"Allowed patterns: [{' '.join(patterns)}]",
                    "param_not_allowed",
                    param=param,
                )

    def check_origin(self, origin: str | None) -> None:
        if origin is None:
            if self.origin_required:
                raise ProxyError(400, "Origin header required", "origin_required")
            return
        if (self.allowed_origins or self.origin_required) and origin not in self.allowed_origins:
            raise ProxyError(403, "Origin not allowed", "origin_not_allowed", type_="permission_error")


def _endpoint_matches(path: str, endpoint: str) -> bool:
    """Prefix match on path segments: `/v1/files` allows `/v1/files/abc`, not `/v1/filesXYZ`."""
    return path == endpoint or path.startswith(endpoint.rstrip("/") + "/")
