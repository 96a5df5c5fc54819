"""A loopback upstream whose caching headers the test chooses through the query string.

`GET|POST /v1/...?cc=<Cache-Control>&etag=<tag>&lm=<Last-Modified>&vary=<Vary>&status=<n>&size=<n>`
answers JSON `{"n": <calls so far>, "lang": <Accept-Language>, "path": ...}` (or `size` bytes of
`x`), so a test can tell whether a request reached it; `drop=1` breaks the connection mid-body.
Query values become response headers; the bundled mock upstream cannot send these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
from aiohttp import web


@dataclass
class HeaderUpstream:
    url: str = ""
    calls: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        query = request.query
        headers = {"Content-Type": "application/json"}
        for param, header in (("cc", "Cache-Control"), ("vary", "Vary"), ("lm", "Last-Modified"),
                              ("expires", "Expires"), ("age", "Age")):
            if param in query:
                headers[header] = query[param]
        if "etag" in query:
            headers["ETag"] = f'"{query["etag"]}"'
        if "drop" in query:
            return await self._broken(request, headers)
        if "size" in query:
            body = b"x" * int(query["size"])
        else:
            body = orjson.dumps({"n": self.calls, "lang": request.headers.get("Accept-Language"),
                                 "path": request.path})
        return web.Response(body=body, status=int(query.get("status", "200")), headers=headers)

    @staticmethod
    async def _broken(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        """Promise 1000 bytes, send 100, then close the connection."""
        response = web.StreamResponse(headers=headers)
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 100)
        assert request.transport is not None
        request.transport.close()
        return response


@asynccontextmanager
async def header_upstream() -> AsyncIterator[HeaderUpstream]:
    upstream = HeaderUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream.url = f"http://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        await runner.cleanup()
