"""The provider file: format, interpolation, defaults, and one error line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_proxy.errors import ConfigError
from llm_proxy.proxy.providers import load_providers
from llm_proxy.settings import load_settings

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "api_providers.yaml"


def server_settings(path: Path | str, **env: str) -> object:
    return load_settings({"MANAGEMENT_TOKEN": "x", "API_CONFIG_PATH": str(path), **env}).server


class TestLoadProviders:
    def test_missing_file_means_the_builtin_openai_provider(self, tmp_path: Path) -> None:
        config = load_providers(server_settings(tmp_path / "absent.yaml", OPENAI_API_URL="http://127.0.0.1:9/"),
                                {})  # type: ignore[arg-type]
        assert config.source == "built-in"
        assert config.active.base_url == "http://127.0.0.1:9"
        assert "/v1/responses" in config.active.allowed_endpoints

    def test_shipped_file_loads_with_env_interpolation(self) -> None:
        config = load_providers(server_settings(REPO_CONFIG), {"OPENAI_API_URL": "http://127.0.0.1:8090"})  # type: ignore[arg-type]
        assert config.default == "openai"
        assert config.active.base_url == "http://127.0.0.1:8090"
        assert config.active.timeouts.request == 300.0
        assert config.providers["anthropic"].auth.header == "x-api-key"
        assert config.providers["anthropic"].auth.value("k") == "k"

    def test_default_url_used_when_variable_unset(self) -> None:
        config = load_providers(server_settings(REPO_CONFIG), {})  # type: ignore[arg-type]
        assert config.active.base_url == "https://api.openai.com"

    def test_default_api_provider_selects_another_provider(self) -> None:
        config = load_providers(server_settings(REPO_CONFIG, DEFAULT_API_PROVIDER="anthropic"), {})  # type: ignore[arg-type]
        assert config.active.name == "anthropic"

    def test_invalid_file_lists_every_problem(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text(
            "default_api: nope\n"
            "apis:\n"
            "  a:\n    base_url: ftp://x\n    allowed_endpoints: []\n    allowed_methods: [GET]\n"
            "    timeouts: {request: soon}\n"
        )
        with pytest.raises(ConfigError) as info:
            load_providers(server_settings(path), {})  # type: ignore[arg-type]
        text = "\n".join(info.value.problems)
        assert "base_url" in text and "allowed_endpoints: must not be empty" in text
        assert "timeouts.request" in text and "default_api 'nope'" in text

    def test_unparseable_yaml_is_one_clear_error(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.yaml"
        path.write_text("apis: [unclosed\n")
        with pytest.raises(ConfigError, match="cannot read provider file"):
            load_providers(server_settings(path), {})  # type: ignore[arg-type]
