"""Online mode against a real server on loopback: the http sink, ``runbus sync``,
``runbus login`` and ``pipeline.Api``.

The server (``server.app.make_app`` over SQLite in ``tmp_path``) runs on its
own asyncio loop in a background thread, so the run's pipeline thread and the
test talk to it over real sockets. A fault middleware in front of the app
answers chosen requests with 500/429/503 to exercise retries, and the server
can be stopped and started again on the same port mid-run.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import pipeline
from pipeline.api import Api
from pipeline.runner import SinkSpec
from pipeline.sync import login_main, resolve_credentials, sync_main
from pipeline.uploader import Uploader, UploadError
from server.app import KEYS_KEY, make_app
from server.store import Store, open_store
from sinks.http import HttpSink

P = "online"
QUIET: dict[str, Any] = {
    "system": False,
    "console": "off",
    "git": False,
    "requirements": False,
    "flush_interval": 0.2,
}


class LoopbackServer:
    """A runbus server on 127.0.0.1 in a background thread; stoppable and restartable."""

    def __init__(self, data: Path) -> None:
        self.data = data
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
        self._store = await open_store(self.data / "runbus.db")
        app = make_app(self._store, data_dir=self.data)
        app.middlewares.insert(0, self._faults)
        if not self.key:
            self.key = app[KEYS_KEY].create(admin=True, name="test admin")[0]
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


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[LoopbackServer]:
    s = LoopbackServer(tmp_path / "server")
    s.data.mkdir()
    s.start()
    yield s
    s.close()


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _steps(api: Api, run_id: str, key: str = "loss") -> list[int]:
    return [r["_step"] for r in api.history(P, run_id, keys=[key])]


def _online_run(srv: LoopbackServer, runs: Path, **sink: Any) -> pipeline.Run:
    http = HttpSink(srv.url, srv.key, **sink)
    return pipeline.init(project=P, dir=runs, settings=QUIET, sinks=[SinkSpec(http, timeout=60)])


def test_live_streaming(srv: LoopbackServer, tmp_path: Path) -> None:
    api = Api(srv.url, srv.key)
    run = _online_run(srv, tmp_path / "runs")
    for i in range(50):
        run.log({"loss": 1.0 / (i + 1), "bad": float("nan")})
    run.flush()
    # Live: the rows reach the server while the run goes on, about a second behind.
    _wait_for(lambda: len(_steps(api, run.id)) >= 49, timeout=5)
    for i in range(50, 300):
        run.log({"loss": 1.0 / (i + 1), "bad": float("nan")})
    run.finish()
    rows = api.history(P, run.id, keys=["loss", "bad"])
    assert [r["_step"] for r in rows] == list(range(300))
    assert all(r["bad"] != r["bad"] for r in rows)  # NaN kept exactly
    rec = api.run(P, run.id)
    assert rec["state"] == "finished"
    assert rec["summary"]["loss"] == pytest.approx(1 / 300)
    assert rec["last_seq"] > 300
    assert [r["id"] for r in api.runs(P)] == [run.id]
    assert api.projects()[0]["name"] == P


def test_server_restart_mid_run(srv: LoopbackServer, tmp_path: Path) -> None:
    api = Api(srv.url, srv.key)
    run = _online_run(srv, tmp_path / "runs")
    for i in range(100):
        run.log({"loss": float(i)})
    run.flush()
    _wait_for(lambda: len(_steps(api, run.id)) >= 99)
    srv.stop()
    for i in range(100, 200):
        run.log({"loss": float(i)})
    run.flush()
    time.sleep(1.0)  # the sink retries against a dead port meanwhile
    srv.start()
    for i in range(200, 300):
        run.log({"loss": float(i)})
    run.finish()
    rows = api.history(P, run.id, keys=["loss"])
    assert [r["_step"] for r in rows] == list(range(300))
    assert [r["loss"] for r in rows] == [float(i) for i in range(300)]
    assert api.run(P, run.id)["state"] == "finished"


def _offline_run(runs: Path, steps: int = 120, **kwargs: Any) -> pipeline.Run:
    run = pipeline.init(project=P, dir=runs, settings=QUIET, **kwargs)
    for i in range(steps):
        run.log({"loss": float(i)})
    print("hello from the run")
    run.finish()
    return run


def test_retries_500_and_429_retry_after(srv: LoopbackServer, tmp_path: Path) -> None:
    run = _offline_run(tmp_path / "runs")
    srv.faults = [
        ("POST", "/events", 500, {}),
        ("POST", "/events", 429, {"Retry-After": "1"}),
        ("POST", "/events", 503, {}),
    ]
    retries: list[tuple[str, float]] = []
    up = Uploader(
        srv.url,
        srv.key,
        None,
        run.dir,
        backoff_base=0.01,
        batch_events=50,
        on_retry=lambda reason, delay: retries.append((reason, delay)),
    )

    async def go() -> None:
        try:
            await up.sync()
        finally:
            await up.aclose()

    asyncio.run(go())
    assert [r[0].split()[1] for r in retries] == ["500", "429", "503"]
    posts = srv.posts()
    assert [s for _, s in posts[:4]] == [500, 429, 503, 200]
    assert posts[2][0] - posts[1][0] >= 0.95  # Retry-After honoured
    assert _steps(Api(srv.url, srv.key), run.id) == list(range(120))


def test_client_errors_are_not_retried(srv: LoopbackServer, tmp_path: Path) -> None:
    run = _offline_run(tmp_path / "runs", steps=5)
    up = Uploader(srv.url, "not-a-key", None, run.dir)
    with pytest.raises(UploadError, match="bad_key") as info:
        asyncio.run(up.push())
    assert info.value.status == 401
    assert len(srv.requests) == 1


def test_sync_offline_run_twice(
    srv: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("PIL")
    runs = tmp_path / "runs"
    run = pipeline.init(project=P, dir=runs, settings={**QUIET, "console": "wrap"})
    for i in range(30):
        run.log({"loss": float(i)})
    run.log({"img": pipeline.Image(np.zeros((4, 4, 3), dtype=np.uint8))})
    print("console line")
    run.finish()
    argv = [str(runs), "--server", srv.url, f"--api-key={srv.key}"]
    assert sync_main(argv) == 0
    assert "sent" in capsys.readouterr().out
    api = Api(srv.url, srv.key)
    assert _steps(api, run.id) == list(range(30))
    rec = api.run(P, run.id)
    assert rec["state"] == "finished"
    files = api._get(f"/projects/{P}/runs/{run.id}/files")["files"]
    assert files
    assert all(f["stored"] for f in files)
    writes = len([r for r in srv.requests if r[1] in ("POST", "PUT")])
    # A second sync finds everything there and sends nothing.
    assert sync_main(argv) == 0
    assert "sent 0 new" in capsys.readouterr().out
    assert len([r for r in srv.requests if r[1] in ("POST", "PUT")]) == writes + 1  # run upsert


def test_sync_resumes_a_partial_upload(srv: LoopbackServer, tmp_path: Path) -> None:
    run = _offline_run(tmp_path / "runs", steps=200)

    def refuse_after_two(up: Uploader) -> None:
        # The third batch is refused for good: the server keeps the first two.
        if up.sent == 80:
            srv.faults.append(("POST", "/events", 400, {}))

    up = Uploader(srv.url, srv.key, None, run.dir, batch_events=40, on_progress=refuse_after_two)
    with pytest.raises(UploadError, match="injected"):
        asyncio.run(up.push())
    api = Api(srv.url, srv.key)
    assert api.run(P, run.id)["last_seq"] == 80
    srv.requests.clear()
    assert sync_main([str(run.dir), "--server", srv.url, f"--api-key={srv.key}"]) == 0
    assert _steps(api, run.id) == list(range(200))
    # The sync sent only what was missing: batches of up to 2,000 events, one here.
    assert len(srv.posts()) == 1


CHILD = """
import os, signal, sys
import pipeline
run = pipeline.init(project=sys.argv[2], dir=sys.argv[1],
                    settings={"quiet": True, "system": False, "git": False,
                              "requirements": False, "console": "off"})
for i in range(75):
    run.log({"loss": float(i)})
run.flush()
print(run.dir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sync_crashed_run(srv: LoopbackServer, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(runs), P],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_dir = Path(proc.stdout.strip())
    assert sync_main([str(run_dir), "--server", srv.url, f"--api-key={srv.key}"]) == 0
    run_id = run_dir.name.split("-", 2)[2]
    # The flush made every step durable but the last (still open when killed),
    # which the flush wrote as a partial row: all 75 arrive.
    assert _steps(Api(srv.url, srv.key), run_id) == list(range(75))


def test_close_times_out_and_says_how_to_sync(srv: LoopbackServer, tmp_path: Path) -> None:
    srv.stop()  # nothing listens: every request fails
    err = io.StringIO()
    started = time.monotonic()
    run = _online_run(srv, tmp_path / "runs", upload_timeout=1.0, stderr=err)
    for i in range(20):
        run.log({"loss": float(i)})
    run.finish()
    assert time.monotonic() - started < 20
    text = err.getvalue()
    assert "were not uploaded" in text
    assert f"runbus sync {run.dir}" in text
    srv.start()
    assert sync_main([str(run.dir), "--server", srv.url, f"--api-key={srv.key}"]) == 0
    assert _steps(Api(srv.url, srv.key), run.id) == list(range(20))


def test_login_stores_key(
    srv: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNBUS_CONFIG_DIR", str(tmp_path / "cfg"))
    assert login_main([srv.url, "--key", "wrong"]) == 1
    assert login_main([srv.url + "/", f"--key={srv.key}"]) == 0
    path = tmp_path / "cfg" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_credentials() == (srv.url, srv.key)
    monkeypatch.setenv("RUNBUS_API_KEY", "from-env")
    assert resolve_credentials() == (srv.url, "from-env")
    assert resolve_credentials(api_key="given") == (srv.url, "given")
    monkeypatch.delenv("RUNBUS_API_KEY")
    run = _offline_run(tmp_path / "runs", steps=3)
    assert sync_main([str(run.dir)]) == 0  # server and key from the stored login
    assert _steps(Api(), run.id) == [0, 1, 2]


def test_init_online_streams_through_the_http_sink(
    srv: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNBUS_CONFIG_DIR", str(tmp_path / "config"))
    run = pipeline.init(
        project=P,
        dir=tmp_path / "runs",
        mode="online",
        server=srv.url,
        api_key=srv.key,
        settings=QUIET,
    )
    for i in range(40):
        run.log({"loss": float(i)})
    run.finish()
    api = Api(srv.url, srv.key)
    assert _steps(api, run.id) == list(range(40))
    assert pipeline.read_run(run.dir).metadata["sinks"]["http"]["state"] == "running"


def test_init_online_without_a_server_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNBUS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("RUNBUS_SERVER", raising=False)
    with pytest.raises(ValueError, match="needs a server"):
        pipeline.init(project=P, dir=tmp_path / "runs", mode="online", settings=QUIET)
    assert not (tmp_path / "runs").exists()
