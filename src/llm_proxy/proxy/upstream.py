"""The upstream client: one pooled aiohttp session per provider per worker.

Bodies pass through untouched in both directions (no decompression, no re-encoding), so
compressed and multipart payloads reach the other side byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp

from llm_proxy.proxy.providers import Provider


class UpstreamUnreachableError(Exception):
    """The upstream could not be reached or broke the connection before answering."""


class UpstreamTimeoutError(Exception):
    """The upstream did not send its status line and headers in time."""


class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]

    def chunks(self) -> AsyncIterator[bytes]: ...

    def release(self) -> None: ...


class Upstream(Protocol):
    """Sends one request upstream; raises UpstreamUnreachableError / UpstreamTimeoutError."""

    async def send(self, method: str, path_qs: str, headers: list[tuple[str, str]],
                   body: bytes) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = [(name.lower(), value) for name, value in resp.raw_headers]

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachableError(f"upstream stream broke: {exc!r}") from exc

    def release(self) -> None:
        self._resp.release()


class AiohttpUpstream:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._base = provider.base_url
        self._header_timeout = provider.timeouts.response_header
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        timeouts = self.provider.timeouts
        connector = aiohttp.TCPConnector(
            limit=self.provider.max_connections,
            limit_per_host=self.provider.max_connections_per_host,
            keepalive_timeout=timeouts.idle_connection,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect,
                                          sock_read=timeouts.request),
        )
        return self._session

    async def send(self, method: str, path_qs: str, headers: list[tuple[str, str]],
                   body: bytes) -> UpstreamResponse:
        session = self._session or self._open()
        try:
            async with asyncio.timeout(self._header_timeout):
                resp = await session.request(
                    method, self._base + path_qs, headers=headers, data=body or None,
                    allow_redirects=False,
                )
        except TimeoutError as exc:
            raise UpstreamTimeoutError(
                f"no response headers from {self.provider.name} within {self._header_timeout:g}s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnreachableError(f"{type(exc).__name__}: {exc}") from exc
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
