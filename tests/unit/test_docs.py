"""The configuration reference in docs/ is generated from the settings catalogue and kept in sync."""

from __future__ import annotations

from pathlib import Path

from llm_proxy.settings import catalogue_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_doc_matches_the_catalogue() -> None:
    assert DOC.read_text().strip() == catalogue_markdown().strip(), (
        "docs/configuration.md is stale: regenerate it with "
        "python -c 'from llm_proxy.settings import catalogue_markdown; print(catalogue_markdown())'"
    )
