"""Pre-auth checks compiled from a provider: method, endpoint, parameter whitelist, origin."""

from __future__ import annotations

import pytest

from llm_proxy.errors import ProxyError
from llm_proxy.proxy.providers import Provider, Timeouts
from llm_proxy.proxy.validation import RequestValidator, glob_to_regex, param_text


def provider(**overrides: object) -> Provider:
    fields: dict[str, object] = {
        "name": "openai", "base_url": "http://127.0.0.1:1",
        "allowed_endpoints": ("/v1/chat/completions", "/v1/files"),
        "allowed_methods": frozenset({"GET", "POST"}),
        "timeouts": Timeouts(1, 1, 1, 1), "max_connections": 1, "max_connections_per_host": 1,
    }
    fields.update(overrides)
    return Provider(**fields)  # type: ignore[arg-type]


def code_of(call: object, *args: object) -> tuple[int, str | None]:
    with pytest.raises(ProxyError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.status, info.value.code


class TestRoutes:
    def test_method_not_allowed_is_405_with_allow_header(self) -> None:
        validator = RequestValidator(provider())
        with pytest.raises(ProxyError) as info:
            validator.check_route("DELETE", "/v1/chat/completions")
        assert (info.value.status, info.value.code) == (405, "method_not_allowed")
        assert info.value.headers["Allow"] == "GET, POST"

    def test_endpoints_match_by_path_segment(self) -> None:
        validator = RequestValidator(provider())
        validator.check_route("GET", "/v1/files")
        validator.check_route("GET", "/v1/files/file-abc")
        assert code_of(validator.check_route, "GET", "/v1/filesXYZ") == (404, "endpoint_not_found")
        assert code_of(validator.check_route, "POST", "/v1/embeddings") == (404, "endpoint_not_found")


class TestParamWhitelist:
    def test_globs_match_like_posix_fnmatch_without_crossing_slashes(self) -> None:
        assert glob_to_regex("gpt-4o-*").match("gpt-4o-mini")
        assert not glob_to_regex("gpt-4o-*").match("gpt-4o")
        assert not glob_to_regex("ft:*").match("ft:a/b")
        assert glob_to_regex("o[14]-mini").match("o4-mini")
        assert not glob_to_regex("o[!14]-mini").match("o4-mini")
        assert glob_to_regex("gpt-?").match("gpt-5")

    def test_values_are_stringified_like_the_predecessor(self) -> None:
        assert param_text(0.7) == "0.7"
        assert param_text(1.0) == "1"
        assert param_text(True) == "true"
        assert param_text(3) == "3"

    def test_disallowed_value_names_param_value_and_patterns(self) -> None:
        validator = RequestValidator(provider(param_whitelist={"model": ("gpt-4o", "gpt-4o-*")}))
        validator.check_params({"model": "gpt-4o-mini", "messages": []})
        validator.check_params({"messages": []})
        with pytest.raises(ProxyError) as info:
            validator.check_params({"model": "gpt-3.5-turbo"})
        assert info.value.status == 400 and info.value.code == "param_not_allowed"
        assert info.value.message == ("Parameter 'model' value 'gpt-3.5-turbo' is not allowed. "
                                      "Allowed patterns: [gpt-4o gpt-4o-*]")
        assert info.value.param == "model"


class TestOrigin:
    def test_no_policy_allows_everything(self) -> None:
        validator = RequestValidator(provider())
        validator.check_origin(None)
        validator.check_origin("https://anything.example")

    def test_allow_list_rejects_other_origins_with_403(self) -> None:
        validator = RequestValidator(provider(allowed_origins=frozenset({"https://ok.example"})))
        validator.check_origin("https://ok.example")
        validator.check_origin(None)
        assert code_of(validator.check_origin, "https://evil.example") == (403, "origin_not_allowed")

    def test_required_origin_is_400_when_missing(self) -> None:
        validator = RequestValidator(provider(allowed_origins=frozenset({"https://ok.example"}), origin_required=True))
        assert code_of(validator.check_origin, None) == (400, "origin_required")
