"""What a call cost, in USD, from the `genai-prices` price table.

The table is the snapshot that ships inside the `genai-prices` wheel (Pydantic's maintained
table of provider prices); it is read offline and never auto-updated at run time, so a price
changes when the package is upgraded. Looking a model up in it costs ~0.1–0.3 ms, so the rates
of each (provider, model) are resolved once and kept as floats for an hour; pricing a call is
then a few multiplications.

Token semantics follow OpenAI's usage object: `input_tokens` include `cached_tokens`, and
`output_tokens` include `reasoning_tokens`. Reasoning tokens are billed at the output rate;
cached input at the cache-read rate (the input rate when the table has none). Tiered prices
(e.g. above 200k input tokens) pick the tier from the call's input tokens, like the table does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

log = logging.getLogger("llm_proxy.cost")

PER_TOKEN = 1_000_000
RATES_TTL = 3600.0
MAX_REMEMBERED = 2048

PROVIDER_IDS = {"azure": "azure", "azure_openai": "azure", "gemini": "google", "vertex": "google",
                "bedrock": "aws", "xai": "x-ai", "mistral_ai": "mistral"}
"""Provider names of our provider file that `genai-prices` knows under another id."""


@dataclass(frozen=True, slots=True)
class Cost:
    input: float
    """Uncached input tokens."""
    cached_input: float
    output: float
    """Output tokens other than reasoning tokens."""
    reasoning: float
    total: float
    price_model: str
    """The table's id of the model that was priced (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`)."""


@dataclass(frozen=True, slots=True)
class _Tiered:
    base: float
    tiers: tuple[tuple[int, float], ...]
    """(start, price) from the highest start down: the first start below the input count wins."""

    def at(self, input_tokens: int) -> float:
        for start, price in self.tiers:
            if input_tokens > start:
                return price
        return self.base


Rate = float | _Tiered


@dataclass(frozen=True, slots=True)
class ModelRates:
    model_id: str
    input: Rate
    cached_input: Rate
    output: Rate
    expires: float


class PriceTable:
    """Prices calls; `price` is cheap after the first call for a (provider, model)."""

    def __init__(self, snapshot: Any = None) -> None:
        self._snapshot = snapshot
        self._rates: dict[tuple[str, str], ModelRates | None] = {}

    def preload(self) -> None:
        """Load the table now (~0.5 s), so the first priced call does not wait for it."""
        if self._snapshot is None:
            self._snapshot = _load_snapshot()

    def price(self, provider: str, model: str | None, input_tokens: int, output_tokens: int,
              cached_tokens: int = 0, reasoning_tokens: int = 0) -> Cost | None:
        """The cost of one call, or None when the model is not in the table."""
        if not model:
            return None
        rates = self.rates(provider, model)
        if rates is None:
            return None
        cached = min(max(cached_tokens, 0), input_tokens)
        reasoning = min(max(reasoning_tokens, 0), output_tokens)
        per_input = _rate(rates.input, input_tokens)
        per_cached = _rate(rates.cached_input, input_tokens)
        per_output = _rate(rates.output, input_tokens)
        parts = ((input_tokens - cached) * per_input, cached * per_cached,
                 (output_tokens - reasoning) * per_output, reasoning * per_output)
        return Cost(*parts, total=sum(parts), price_model=rates.model_id)

    def rates(self, provider: str, model: str) -> ModelRates | None:
        key = (provider, model)
        if key in self._rates:
            rates = self._rates[key]
            if rates is None or rates.expires > time.monotonic():
                return rates
        if len(self._rates) >= MAX_REMEMBERED:
            self._rates.clear()
        rates = self._rates[key] = self._lookup(provider, model)
        return rates

    def _lookup(self, provider: str, model: str) -> ModelRates | None:
        snapshot = self._snapshot or _load_snapshot()
        provider_id = PROVIDER_IDS.get(provider, provider)
        for candidate in (provider_id, None):
            try:
                _, info = snapshot.find_provider_model(model, None, candidate, None)
            except LookupError:
                continue
            prices = info.get_prices(datetime.now(UTC))
            input_rate = _convert(getattr(prices, "input_mtok", None))
            cache_read = getattr(prices, "cache_read_mtok", None)
            return ModelRates(
                model_id=info.id, input=input_rate,
                cached_input=input_rate if cache_read is None else _convert(cache_read),
                output=_convert(getattr(prices, "output_mtok", None)),
                expires=time.monotonic() + RATES_TTL,
            )
        log.debug("no price for model %r of provider %r", model, provider)
        return None


def _load_snapshot() -> Any:
    from genai_prices import data_snapshot

    return data_snapshot.get_snapshot()


def _convert(price: Any) -> Rate:
    if price is None:
        return 0.0
    if isinstance(price, Decimal | int | float):
        return float(price) / PER_TOKEN
    tiers = sorted(((t.start, float(t.price) / PER_TOKEN) for t in price.tiers), reverse=True)
    return _Tiered(float(price.base) / PER_TOKEN, tuple(tiers))


def _rate(rate: Rate, input_tokens: int) -> float:
    return rate if isinstance(rate, float) else rate.at(input_tokens)
