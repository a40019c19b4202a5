"""A real runbus server on loopback for the online-mode tests.

The server (``server.app.make_app`` over a SQLite file or a PostgreSQL schema)
runs on its own asyncio loop in a background thread, so a run's pipeline
thread and the test talk to it over real sockets. A fault middleware in front
of the app answers chosen requests with 500/429/503 to exercise retries, and
the server can be stopped and started again on the same port mid-run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

import pipeline
from pipeline.api import Api
from pipeline.runner import SinkSpec
from server.app import KEYS_KEY, make_app
from server.store import Store, open_store
from sinks.http import HttpSink


class LoopbackServer:
    """A runbus server on 127.0.0.1 in a background thread; stoppable and restartable.

    ``store``: a ``postgresql://`` URL (with ``store_options`` such as
    ``schema``) or None for SQLite in ``data``.
    """

    def __init__(self, data: Path, store: str | None = None, **store_options: Any) -> None:
        self.data = data
        self.store = store or str(data / "runbus.db")
        self.store_options = store_options
        self.port = 0
        self.key = ""
        #: Injected answers, taken one per matching request: (method, path suffix, status, headers).
        self.faults: list[tuple[str, str, int, dict[str, str]]] = []
        #: (monotonic time, method, path, status) of every request.
        self.requests: list[tuple[float, str, str, int]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self._store: Store | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> Api:
        """A query client with the admin key."""
        return Api(self.url, self.key)

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)  # type: ignore[arg-type]

    def start(self) -> None:
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop())

    def close(self) -> None:
        if self._runner is not None:
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @web.middleware
    async def _faults(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        for i, (method, suffix, status, headers) in enumerate(self.faults):
            if request.method == method and request.path.endswith(suffix):
                del self.faults[i]
                await request.read()
                self.requests.append((time.monotonic(), request.method, request.path, status))
                return web.json_response(
                    {"error": {"code": "injected", "message": "injected fault"}},
                    status=status,
                    headers=headers,
                )
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            self.requests.append((time.monotonic(), request.method, request.path, e.status))
            raise
        self.requests.append((time.monotonic(), request.method, request.path, resp.status))
        return resp

    async def _start(self) -> None:
        self._store = await open_store(self.store, **self.store_options)
        app = make_app(self._store, data_dir=self.data)
        app.middlewares.insert(0, self._faults)
        if not self.key:
            self.key = (await app[KEYS_KEY].create(admin=True, name="test admin"))[0]
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        for address in self._runner.addresses:
            self.port = int(address[1])
            break

    async def _stop(self) -> None:
        assert self._runner is not None
        assert self._store is not None
        await self._runner.cleanup()
        await self._store.aclose()
        self._runner = None
        self._store = None

    def posts(self, suffix: str = "/events", method: str = "POST") -> list[tuple[float, int]]:
        return [(t, s) for t, m, p, s in self.requests if m == method and p.endswith(suffix)]


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond()`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout:g} s")
        time.sleep(0.02)


#: The project the online tests log to, and settings that keep runs quiet and small.
PROJECT = "online"
QUIET: dict[str, Any] = {
    "system": False,
    "console": "off",
    "git": False,
    "requirements": False,
    "flush_interval": 0.2,
}


def online_run(
    url: str,
    key: str,
    runs: Path,
    *,
    settings: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
    **sink: Any,
) -> tuple[pipeline.Run, HttpSink]:
    """A run streaming to ``url`` through an :class:`HttpSink` made with ``sink`` options.

    ``settings`` add to :data:`QUIET`; ``init`` are more ``pipeline.init`` arguments.
    """
    http = HttpSink(url, key, **sink)
    run = pipeline.init(
        project=PROJECT,
        dir=runs,
        settings={**QUIET, **(settings or {})},
        sinks=[SinkSpec(http, timeout=60)],
        **(init or {}),
    )
    return run, http
