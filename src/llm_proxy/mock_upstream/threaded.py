"""The mock on its own event loop in a daemon thread, for synchronous tests and tools."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from llm_proxy.mock_upstream.server import MockServer, start_mock


class ThreadedMock:
    """`with ThreadedMock(chunks=4) as mock: ... mock.url ...`; options as for `start_mock`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        started: Future[MockServer] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(host, port, options, started), name="mock-openai", daemon=True
        )
        self._thread.start()
        self._server = started.result(timeout=10)

    def _run(
        self, host: str, port: int, options: dict[str, Any], started: Future[MockServer]
    ) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(start_mock(host, port, **options))
        except BaseException as exc:
            started.set_exception(exc)
            self._loop.close()
            return
        started.set_result(server)
        self._loop.run_forever()
        self._loop.close()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> ThreadedMock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
