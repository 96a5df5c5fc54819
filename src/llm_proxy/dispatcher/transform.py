"""Event → SinkRecord: decode the bodies, merge streams, settle model, usage and cost.

Pure functions of the event (plus a token counter and a price table), so every sink sees the
same numbers. Usage comes, in this order, from the response body (a streamed response's final
chunk or terminal event included), from the usage the proxy already put in the event, or, for a
successful text call that reported none, from counting tokens with tiktoken — then the event
says `usage_estimated`. Cost comes from the price table; a model the table does not know gets
`cost_usd = None, cost_known = False`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llm_proxy.dispatcher.decode import decode_body, looks_like_sse
from llm_proxy.dispatcher.record import SinkRecord
from llm_proxy.dispatcher.shapes import api_kind, output_text, prompt_text
from llm_proxy.dispatcher.sse_merge import merge_stream
from llm_proxy.dispatcher.tokens import TokenCounter
from llm_proxy.events import Event
from llm_proxy.middleware.usage import normalize_usage
from llm_proxy.telemetry.cost import PriceTable

ESTIMATED_KINDS = frozenset({"chat", "completions", "responses", "embeddings"})
"""Shapes whose usage we can count when the provider did not report it."""

Usage = dict[str, int]


class Transformer:
    def __init__(self, counter: TokenCounter | None = None, prices: PriceTable | None = None, *,
                 verbose: bool = False) -> None:
        self.counter = counter or TokenCounter()
        self.prices = prices or PriceTable()
        self.verbose = verbose

    def __call__(self, event: Event) -> SinkRecord:
        api = api_kind(event.path)
        request = decode_body(event.request_body, event.request_headers.get("content-type", ""),
                              event.request_headers.get("content-encoding")).value
        content_type = event.response_headers.get("content-type", "")
        body = decode_body(event.response_body, content_type, event.content_encoding)
        response, stream_text = body.value, None
        if looks_like_sse(body.text, content_type):
            stream_text = body.text
            response = merge_stream(stream_text or "", api)
        model = resolve_model(event, request, response)
        usage, estimated = self.usage(event, api, model, request, response)
        event = msgspec.structs.replace(event, model=model, **self._usage_fields(event, model, usage, estimated))
        return SinkRecord(event, api, request, response, stream_text, self.verbose)

    def usage(self, event: Event, api: str, model: str | None, request: Any,
              response: Any) -> tuple[Usage | None, bool]:
        found = normalize_usage(response.get("usage")) if isinstance(response, dict) else None
        if found:
            return found, False
        if event.input_tokens is not None or event.output_tokens is not None:
            return _event_usage(event), event.usage_estimated
        if api not in ESTIMATED_KINDS or not 200 <= event.status < 300 or not isinstance(request, dict):
            return None, False
        return self.estimate(api, model, request, response), True

    def estimate(self, api: str, model: str | None, request: dict[str, Any], response: Any) -> Usage:
        if api == "chat" and isinstance(request.get("messages"), list):
            prompt = self.counter.count_messages(request["messages"], model)
        else:
            prompt = self.counter.count(prompt_text(api, request), model)
        completion = 0 if api == "embeddings" else self.counter.count(output_text(api, response), model)
        return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
                "cached_tokens": 0, "reasoning_tokens": 0}

    def _usage_fields(self, event: Event, model: str | None, usage: Usage | None,
                      estimated: bool) -> dict[str, Any]:
        if usage is None:
            return {"usage_estimated": False, "cost_usd": None, "cost_known": False}
        cost = self.prices.price(event.provider or "openai", model, usage["input_tokens"], usage["output_tokens"],
                                 usage["cached_tokens"], usage["reasoning_tokens"])
        return {**usage, "usage_estimated": estimated, "cost_usd": cost.total if cost else None,
                "cost_known": cost is not None}


def resolve_model(event: Event, request: Any, response: Any) -> str | None:
    """The model that answered (the response's, e.g. a dated snapshot), else the one asked for."""
    for source in (response, request):
        if isinstance(source, dict) and isinstance(source.get("model"), str) and source["model"]:
            return str(source["model"])
    return event.model


def _event_usage(event: Event) -> Usage:
    input_tokens, output_tokens = event.input_tokens or 0, event.output_tokens or 0
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "total_tokens": event.total_tokens if event.total_tokens is not None else input_tokens + output_tokens,
            "cached_tokens": event.cached_tokens or 0, "reasoning_tokens": event.reasoning_tokens or 0}
