"""Every registered sink imports, satisfies the Sink protocol and builds from settings."""

from __future__ import annotations

import pytest

from llm_proxy.dispatcher.sinks import SINKS, Sink, build_sink, sink_class
from llm_proxy.dispatcher.sinks.memory import InMemorySink
from llm_proxy.errors import ConfigError
from tests.dispatcher.conftest import settings_with


@pytest.mark.parametrize("name", sorted(SINKS))
async def test_every_sink_builds_and_satisfies_the_protocol(name: str, tmp_path: object) -> None:
    settings = settings_with(DISPATCHER_SERVICE=name, DISPATCHER_ENDPOINT=f"{tmp_path}/events.jsonl"
                             if name == "file" else "http://127.0.0.1:9", LLM_PROXY_API_KEY="k")
    sink = build_sink(name, settings)
    built: object = sink
    assert isinstance(built, Sink)
    assert isinstance(sink, sink_class(name))
    await sink.aclose()


def test_the_memory_sink_satisfies_the_protocol() -> None:
    assert isinstance(InMemorySink(), Sink)


def test_an_unknown_sink_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown sink 'datadog'; valid: file, lunary, helicone, cloudwatch"):
        sink_class("datadog")


@pytest.mark.parametrize(("name", "needs"), [("file", "DISPATCHER_ENDPOINT"), ("lunary", "LUNARY_PUBLIC_KEY"),
                                             ("helicone", "HELICONE_API_KEY")])
def test_missing_configuration_is_one_clear_error(name: str, needs: str) -> None:
    with pytest.raises(ConfigError, match=needs):
        build_sink(name, settings_with())
