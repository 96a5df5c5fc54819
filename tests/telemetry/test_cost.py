"""Pricing calls from the genai-prices table: cached input, reasoning output, tiers, unknown models."""

from __future__ import annotations

import pytest

from llm_proxy.telemetry.cost import PriceTable


@pytest.fixture(scope="module")
def table() -> PriceTable:
    prices = PriceTable()
    prices.preload()
    return prices


class TestPriceTable:
    def test_gpt_4o_mini_prices_uncached_cached_output_and_reasoning_tokens(self, table: PriceTable) -> None:
        """$0.15/M input, $0.075/M cached input, $0.60/M output; reasoning is part of the output."""
        cost = table.price("openai", "gpt-4o-mini", input_tokens=1000, output_tokens=500, cached_tokens=200,
                           reasoning_tokens=100)
        assert cost is not None
        assert cost.input == pytest.approx(800 * 0.15e-6)
        assert cost.cached_input == pytest.approx(200 * 0.075e-6)
        assert cost.output == pytest.approx(400 * 0.6e-6)
        assert cost.reasoning == pytest.approx(100 * 0.6e-6)
        assert cost.total == pytest.approx(0.000435)

    def test_matches_the_package_s_own_calculation(self, table: PriceTable) -> None:
        from genai_prices import Usage, calc_price

        reference = calc_price(Usage(input_tokens=12_345, cache_read_tokens=2_345, output_tokens=6_789), "o3",
                               provider_id="openai")
        cost = table.price("openai", "o3", 12_345, 6_789, cached_tokens=2_345, reasoning_tokens=4_000)
        assert cost is not None
        assert cost.total == pytest.approx(float(reference.total_price))

    def test_a_dated_snapshot_is_priced_as_its_model(self, table: PriceTable) -> None:
        cost = table.price("openai", "gpt-4o-mini-2024-07-18", 1_000_000, 0)
        assert cost is not None
        assert cost.price_model == "gpt-4o-mini"
        assert cost.total == pytest.approx(0.15)

    def test_tiered_prices_switch_on_the_call_s_input_tokens(self, table: PriceTable) -> None:
        """gemini-2.5-pro: $1.25/M input up to 200k input tokens, $2.50/M above."""
        small = table.price("google", "gemini-2.5-pro", 100_000, 0)
        large = table.price("google", "gemini-2.5-pro", 300_000, 0)
        assert small is not None
        assert large is not None
        assert small.total == pytest.approx(0.125)
        assert large.total == pytest.approx(0.75)

    def test_cached_tokens_above_the_input_are_capped(self, table: PriceTable) -> None:
        cost = table.price("openai", "gpt-4o-mini", 100, 0, cached_tokens=500)
        assert cost is not None
        assert cost.input == 0
        assert cost.cached_input == pytest.approx(100 * 0.075e-6)

    def test_unknown_models_and_missing_models_have_no_price(self, table: PriceTable) -> None:
        assert table.price("openai", "no-such-model-xyz", 10, 10) is None
        assert table.price("openai", None, 10, 10) is None

    def test_an_unknown_provider_name_falls_back_to_the_model(self, table: PriceTable) -> None:
        cost = table.price("my-gateway", "gpt-4o-mini", 1_000_000, 0)
        assert cost is not None
        assert cost.total == pytest.approx(0.15)

    def test_rates_are_resolved_once_per_provider_and_model(self, table: PriceTable) -> None:
        first = table.rates("openai", "gpt-4o")
        assert first is not None
        assert table.rates("openai", "gpt-4o") is first
