"""The settings catalogue: defaults, strict parsing, one problem per bad variable."""

from __future__ import annotations

import pytest

from llm_proxy.errors import ConfigError
from llm_proxy.settings import (
    catalogue_markdown,
    load_settings,
    parse_duration,
    parse_size,
    split_listen_addr,
)

BASE = {"MANAGEMENT_TOKEN": "m" * 16}


class TestParsing:
    @pytest.mark.parametrize(("raw", "seconds"), [("30s", 30.0), ("1m30s", 90.0), ("250ms", 0.25),
                                                   ("2h", 7200.0), ("1.5", 1.5), ("0", 0.0)])
    def test_durations_accept_go_syntax_and_plain_seconds(self, raw: str, seconds: float) -> None:
        assert parse_duration(raw) == pytest.approx(seconds)

    @pytest.mark.parametrize("raw", ["", "abc", "10x", "5m-3s", "-1"])
    def test_bad_durations_are_rejected(self, raw: str) -> None:
        with pytest.raises(ValueError, match="duration"):
            parse_duration(raw)

    @pytest.mark.parametrize(("raw", "size"), [("1048576", 1048576), ("10MB", 10 * 1024**2), ("64KiB", 65536)])
    def test_sizes(self, raw: str, size: int) -> None:
        assert parse_size(raw) == size

    def test_listen_addr_forms(self) -> None:
        assert split_listen_addr(":8080") == ("0.0.0.0", 8080)
        assert split_listen_addr("127.0.0.1:9000") == ("127.0.0.1", 9000)
        assert split_listen_addr("[::1]:80") == ("::1", 80)
        with pytest.raises(ValueError, match="host:port"):
            split_listen_addr("8080")


class TestLoadSettings:
    def test_defaults_are_the_embedded_set_up(self) -> None:
        settings = load_settings(BASE)
        assert settings.server.listen_addr == ":8080"
        assert settings.storage.db_driver == "sqlite"
        assert settings.storage.url() == "sqlite+aiosqlite:///./data/llm-proxy.db"
        assert settings.observability.event_bus == "in-memory"
        assert settings.observability.max_request_body_bytes == 65536
        assert settings.redis.stream_key == "llm-proxy-events"

    def test_management_token_is_required(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_settings({})
        assert info.value.problems == ["MANAGEMENT_TOKEN: required (the bearer token of the management API)"]

    def test_every_bad_variable_is_reported_once_with_its_name(self) -> None:
        env = {**BASE, "REQUEST_TIMEOUT": "soon", "MAX_REQUEST_SIZE": "10 parsecs", "DB_DRIVER": "oracle",
               "ENCRYPTION_KEY": "not-base64!", "LOG_LEVEL": "loud"}
        with pytest.raises(ConfigError) as info:
            load_settings(env)
        names = [p.split(":")[0] for p in info.value.problems]
        assert sorted(names) == ["DB_DRIVER", "ENCRYPTION_KEY", "LOG_LEVEL", "MAX_REQUEST_SIZE", "REQUEST_TIMEOUT"]

    def test_encryption_key_must_be_32_bytes(self) -> None:
        with pytest.raises(ConfigError, match="exactly 32 bytes"):
            load_settings({**BASE, "ENCRYPTION_KEY": "c2hvcnQ="})

    def test_require_encryption_key(self) -> None:
        with pytest.raises(ConfigError, match="REQUIRE_ENCRYPTION_KEY"):
            load_settings({**BASE, "REQUIRE_ENCRYPTION_KEY": "true"})

    def test_database_url_required_for_server_databases(self) -> None:
        with pytest.raises(ConfigError, match="DATABASE_URL"):
            load_settings({**BASE, "DB_DRIVER": "postgres"})

    def test_server_database_urls_get_async_drivers(self) -> None:
        pg = load_settings({**BASE, "DB_DRIVER": "postgres", "DATABASE_URL": "postgres://u@h:5432/d"})
        my = load_settings({**BASE, "DB_DRIVER": "mysql", "DATABASE_URL": "mysql://root@h:3306/d"})
        assert pg.storage.url() == "postgresql+asyncpg://u@h:5432/d"
        assert my.storage.url() == "mysql+aiomysql://root@h:3306/d"

    def test_redis_url_from_parts(self) -> None:
        settings = load_settings({**BASE, "REDIS_ADDR": "10.0.0.1:6380", "REDIS_DB": "2",
                                  "REDIS_PASSWORD": "pw", "REDIS_TLS": "true"})
        assert settings.redis.connection_url() == "rediss://:pw@10.0.0.1:6380/2"

    def test_configuration_reference_lists_every_variable(self) -> None:
        text = catalogue_markdown()
        for name in ("MANAGEMENT_TOKEN", "LLM_PROXY_EVENT_BUS", "REDIS_STREAM_CLAIM_TIME", "AUDIT_LOG_FILE"):
            assert f"`{name}`" in text
