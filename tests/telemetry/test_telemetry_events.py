"""The telemetry registry: attach, execute, detach, spans, failing handlers, the default logger."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import llm_proxy.telemetry as telemetry_module
from llm_proxy.errors import ConfigError
from llm_proxy.telemetry import EVENT_NAMES, HandlerExistsError, Telemetry, attach_default_logger
from llm_proxy.telemetry.events import install_handlers

Call = tuple[str, dict[str, Any], dict[str, Any], Any]


def recorder(calls: list[Call]) -> Any:
    def handle(name: str, measurements: Any, metadata: Any, config: Any) -> None:
        calls.append((name, dict(measurements), dict(metadata), config))
    return handle


class TestTelemetry:
    def test_execute_reaches_handlers_of_exactly_that_name_with_their_config(self) -> None:
        """Handlers see name, measurements, metadata and the config they were attached with."""
        telemetry, calls = Telemetry(), list[Call]()
        telemetry.attach("a", "llm_proxy.cache.hit", recorder(calls), config={"k": 1})
        telemetry.execute("llm_proxy.cache.hit", {"bytes": 10}, {"key": "x"})
        telemetry.execute("llm_proxy.cache.miss", {}, {})
        assert calls == [("llm_proxy.cache.hit", {"bytes": 10}, {"key": "x"}, {"k": 1})]

    def test_attach_many_and_detach_by_id(self) -> None:
        telemetry, calls = Telemetry(), list[Call]()
        telemetry.attach_many("many", ["llm_proxy.cache.hit", "llm_proxy.cache.miss"], recorder(calls))
        telemetry.execute("llm_proxy.cache.miss", {}, {})
        assert telemetry.detach("many") is True
        assert telemetry.detach("many") is False
        telemetry.execute("llm_proxy.cache.hit", {}, {})
        assert [c[0] for c in calls] == ["llm_proxy.cache.miss"]
        assert telemetry.list_handlers() == []

    def test_a_handler_id_can_be_attached_only_once(self) -> None:
        telemetry = Telemetry()
        telemetry.attach("dup", "llm_proxy.cache.hit", recorder([]))
        with pytest.raises(HandlerExistsError):
            telemetry.attach("dup", "llm_proxy.cache.miss", recorder([]))

    def test_list_handlers_filters_by_name_prefix(self) -> None:
        telemetry = Telemetry()
        telemetry.attach("c", "llm_proxy.cache.hit", recorder([]))
        telemetry.attach("p", "llm_proxy.proxy.request.stop", recorder([]))
        assert [h.handler_id for h in telemetry.list_handlers("llm_proxy.cache")] == ["c"]
        assert {h.handler_id for h in telemetry.list_handlers()} == {"c", "p"}

    def test_a_failing_handler_is_detached_logged_and_does_not_stop_the_others(
            self, caplog: pytest.LogCaptureFixture) -> None:
        telemetry, calls = Telemetry(), list[Call]()

        def broken(*_: Any) -> None:
            raise RuntimeError("boom")

        telemetry.attach("broken", "llm_proxy.cache.hit", broken)
        telemetry.attach("good", "llm_proxy.cache.hit", recorder(calls))
        with caplog.at_level(logging.ERROR, logger="llm_proxy.telemetry"):
            telemetry.execute("llm_proxy.cache.hit", {}, {})
            telemetry.execute("llm_proxy.cache.hit", {}, {})
        assert len(calls) == 2
        assert [h.handler_id for h in telemetry.list_handlers()] == ["good"]
        assert sum("'broken' failed" in r.getMessage() for r in caplog.records) == 1


class TestSpan:
    def test_span_emits_start_then_stop_with_a_duration_and_the_final_metadata(self) -> None:
        telemetry, calls = Telemetry(), list[Call]()
        telemetry.attach_many("s", ["llm_proxy.auth.start", "llm_proxy.auth.stop"], recorder(calls))
        with telemetry.span("llm_proxy.auth", {"request_id": "r"}) as metadata:
            metadata["result"] = "ok"
        (start, start_m, _, _), (stop, stop_m, stop_md, _) = calls
        assert (start, stop) == ("llm_proxy.auth.start", "llm_proxy.auth.stop")
        assert {"monotonic_time", "system_time"} <= start_m.keys()
        assert stop_m["duration"] >= 0
        assert stop_md == {"request_id": "r", "result": "ok"}

    def test_span_emits_exception_with_kind_reason_and_code_and_reraises(self) -> None:
        telemetry, calls = Telemetry(), list[Call]()
        telemetry.attach("s", "llm_proxy.auth.exception", recorder(calls))
        error = ValueError("no")
        error.code = "token_expired"  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="no"), telemetry.span("llm_proxy.auth", {}):
            raise error
        [(_, measurements, metadata, _)] = calls
        assert measurements["duration"] >= 0
        assert metadata == {"kind": "ValueError", "reason": error, "code": "token_expired"}

    def test_span_without_listeners_calls_nothing_and_still_yields_the_metadata(self) -> None:
        telemetry = Telemetry()
        metadata = {"a": 1}
        with telemetry.span("llm_proxy.cache.lookup", metadata) as given:
            assert given is metadata


class TestDefaults:
    def test_module_functions_act_on_the_process_wide_registry(self) -> None:
        calls: list[Call] = []
        telemetry_module.attach("test-module", "llm_proxy.cache.put", recorder(calls))
        try:
            telemetry_module.execute("llm_proxy.cache.put", {"bytes": 1}, {})
            assert telemetry_module.default.list_handlers("llm_proxy.cache.put")[0].handler_id == "test-module"
        finally:
            telemetry_module.detach("test-module")
        assert len(calls) == 1

    def test_default_logger_logs_every_documented_event_without_objects(
            self, caplog: pytest.LogCaptureFixture) -> None:
        telemetry = Telemetry()
        attach_default_logger("info", telemetry)
        assert {h.event_name for h in telemetry.list_handlers()} == set(EVENT_NAMES)
        with caplog.at_level(logging.INFO, logger="llm_proxy.telemetry"):
            telemetry.execute("llm_proxy.cost.calculated", {"cost_usd": 0.5}, {"model": "m", "event": object()})
        [record] = caplog.records
        assert record.getMessage() == "llm_proxy.cost.calculated"
        assert record.measurements == {"cost_usd": 0.5}  # type: ignore[attr-defined]
        assert record.metadata == {"model": "m"}  # type: ignore[attr-defined]

    def test_install_handlers_calls_each_import_string_with_the_registry(self) -> None:
        telemetry = Telemetry()
        install_handlers(telemetry, ["tests.telemetry.custom_handlers:install"])
        install_handlers(telemetry, ["tests.telemetry.custom_handlers:install"])  # a second app start
        assert [h.handler_id for h in telemetry.list_handlers()] == ["slow-calls"]
        with pytest.raises(ConfigError, match="TELEMETRY_HANDLERS"):
            install_handlers(telemetry, ["llm_proxy.nope:install"])
