"""What the HTTP sinks share: one pooled aiohttp session, and HTTP status → sink error."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from llm_proxy.dispatcher.sinks import RecordError, SinkRejectedError, SinkRetryableError, SinkTooLargeError

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str


class HttpPoster:
    """POSTs JSON bodies; connection failures and timeouts become `SinkRetryableError`."""

    def __init__(self, service: str, timeout: float, limit: int = 16) -> None:
        self.service = service
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=self.limit),
                headers={"User-Agent": "llm-proxy-dispatcher"})
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        try:
            async with self._client().post(url, data=body, headers={
                    "Content-Type": "application/json", **headers}) as response:
                text = await response.text(errors="replace")
                return Reply(response.status, dict(response.headers), text)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkRetryableError(f"{self.service}: {type(exc).__name__}: {str(exc) or 'timeout'}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def status_error(service: str, reply: Reply) -> RecordError | None:
    """None for 2xx; otherwise the error the status means for the records sent."""
    if 200 <= reply.status < 300:
        return None
    message = f"{service} answered HTTP {reply.status}: {reply.text[:300].strip()}"
    if reply.status == 413:
        return SinkTooLargeError(message)
    if reply.status in RETRYABLE_STATUSES or reply.status >= 500:
        return SinkRetryableError(message, retry_after=retry_after(reply.headers))
    return SinkRejectedError(message)


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from `Retry-After` (seconds or an HTTP date) or Lunary's `Rate-Limit-Reset`."""
    lowered = {key.lower(): value for key, value in headers.items()}
    for name in ("retry-after", "rate-limit-reset", "x-ratelimit-reset"):
        value = lowered.get(name, "").strip()
        if not value:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, parsed.timestamp() - (time.time() if now is None else now))
    return None
