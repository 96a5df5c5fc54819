"""`X-LLM-Proxy-Cost` for non-streamed JSON answers: read the body first, price it, then send.

Response headers leave before the body, and the usage is in the body. For a plain (not encoded)
JSON answer of at most `MAX_PRICED_BYTES` the endpoint therefore reads the whole upstream body,
takes the usage from it (stored in `ctx.usage`, so the instrumentation does not parse it again),
adds the header and sends status, headers and body together. Streams, encoded bodies and larger
or other answers are relayed chunk by chunk as before, without the header; an answer that turns
out larger than the limit while being read is sent on unpriced, from where the reading stopped.
"""

from __future__ import annotations

import time
from typing import Any

from llm_proxy.context import RequestContext
from llm_proxy.middleware.usage import usage_from_json
from llm_proxy.proxy.upstream import UpstreamResponse, UpstreamUnreachableError
from llm_proxy.telemetry.cost import PriceTable

MAX_PRICED_BYTES = 1024 * 1024
COST_HEADER = b"x-llm-proxy-cost"

Send = Any
Headers = list[tuple[bytes, bytes]]


def priceable(headers: Headers, ctx: RequestContext) -> bool:
    """A non-streamed, unencoded JSON answer that declares no length above the limit."""
    if ctx.stream:
        return False
    json = False
    for name, value in headers:
        if name == b"content-type":
            json = value.startswith(b"application/json")
        elif name == b"content-encoding" or (name == b"content-length" and not _small(value)):
            return False
    return json


def _small(content_length: bytes) -> bool:
    return content_length.isdigit() and int(content_length) <= MAX_PRICED_BYTES


def format_usd(amount: float) -> bytes:
    """Plain decimal notation (no exponent), at most 12 decimals: `0.00000375`."""
    text = f"{amount:.12f}".rstrip("0").rstrip(".")
    return (text or "0").encode()


async def relay_priced(response: UpstreamResponse, out: Headers, send: Send, ctx: RequestContext,
                       prices: PriceTable) -> None:
    chunks: list[bytes] = []
    size = 0
    stream = response.chunks()
    try:
        async for chunk in stream:
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_PRICED_BYTES:
                await _send_unpriced(response.status, out, send, chunks)
                async for rest in stream:
                    await send({"type": "http.response.body", "body": rest, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
    except UpstreamUnreachableError:
        await _send_unpriced(response.status, out, send, chunks)
        raise
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    ctx.upstream_finished = time.monotonic()
    add_cost_header(body, out, ctx, prices)
    await send({"type": "http.response.start", "status": response.status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def add_cost_header(body: bytes, out: Headers, ctx: RequestContext, prices: PriceTable) -> None:
    """Price a whole non-streamed JSON body: `ctx.usage` and, when priced, the header in `out`."""
    usage, ctx.response_document = usage_from_json(body)
    if usage is None:
        return
    ctx.usage = usage
    cost = prices.price(ctx.provider, ctx.model, usage["input_tokens"], usage["output_tokens"],
                        usage["cached_tokens"], usage["reasoning_tokens"])
    if cost is not None:
        out.append((COST_HEADER, format_usd(cost.total)))


async def _send_unpriced(status: int, out: Headers, send: Send, chunks: list[bytes]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": out})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
