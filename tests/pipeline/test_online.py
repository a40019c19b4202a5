"""Online mode against a real server on loopback (tests/pipeline/loopback.py): the
http sink, ``runbus sync``, ``runbus login`` and ``pipeline.Api``.

Live streaming and a server restart mid-run are tested on both stores; the
rest on SQLite. Network faults below HTTP are in test_online_faults.py.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from child import run_python
from loopback import PROJECT as P
from loopback import QUIET, LoopbackServer, online_run, wait_until

import pipeline
from pipeline.api import Api
from pipeline.sync import login_main, resolve_credentials, sync_main
from pipeline.uploader import Uploader, UploadError


def _steps(api: Api, run_id: str, key: str = "loss") -> list[int]:
    return [r["_step"] for r in api.history(P, run_id, keys=[key])]


def test_live_streaming(srv_each: LoopbackServer, tmp_path: Path) -> None:
    srv = srv_each
    api = srv.api()
    run, _ = online_run(srv.url, srv.key, tmp_path / "runs")
    for i in range(50):
        run.log({"loss": 1.0 / (i + 1), "bad": float("nan")})
    run.flush()
    # Live: the rows reach the server while the run goes on, about a second behind.
    wait_until(lambda: len(_steps(api, run.id)) >= 49, timeout=5, what="live rows")
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


def test_server_restart_mid_run(srv_each: LoopbackServer, tmp_path: Path) -> None:
    srv = srv_each
    api = srv.api()
    run, sink = online_run(srv.url, srv.key, tmp_path / "runs", backoff_base=0.05, backoff_max=0.2)
    for i in range(100):
        run.log({"loss": float(i)})
    run.flush()
    wait_until(lambda: len(_steps(api, run.id)) >= 99, what="rows before the restart")
    srv.stop()
    for i in range(100, 200):
        run.log({"loss": float(i)})
    run.flush()
    up = sink.uploader
    assert up is not None
    # The sink retries against the dead port meanwhile.
    wait_until(lambda: up.retries >= 3, what="retries while the server is down")
    srv.start()
    for i in range(200, 300):
        run.log({"loss": float(i)})
    run.finish()
    rows = api.history(P, run.id, keys=["loss"])
    assert [r["_step"] for r in rows] == list(range(300))
    assert [r["loss"] for r in rows] == [float(i) for i in range(300)]
    assert api.run(P, run.id)["state"] == "finished"
    assert "Connect" in (up.last_retry or "")


def test_resumed_run_reopens_on_the_server(srv: LoopbackServer, tmp_path: Path) -> None:
    api = srv.api()
    runs = tmp_path / "runs"
    first, _ = online_run(srv.url, srv.key, runs)
    for i in range(30):
        first.log({"loss": float(i)})
    first.finish()
    assert api.run(P, first.id)["state"] == "finished"
    run, _ = online_run(srv.url, srv.key, runs, init={"id": first.id, "resume": "allow"})
    for i in range(30, 60):
        run.log({"loss": float(i)})
    run.flush()
    # The resumed segment reopens the run; its own finish closes it again.
    wait_until(lambda: api.run(P, run.id)["state"] == "running", what="the run reopened")
    run.finish()
    rec = api.run(P, run.id)
    assert rec["state"] == "finished"
    assert rec["metadata"]["resumed"] == 1
    assert _steps(api, run.id) == list(range(60))


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

    async def go() -> None:
        try:
            await up.push()
        finally:
            await up.aclose()

    with pytest.raises(UploadError, match="bad_key") as info:
        asyncio.run(go())
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
    assert len([r for r in srv.requests if r[1] in ("POST", "PUT")]) == writes
    assert api.run(P, run.id)["state"] == "finished"


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
    run, _ = online_run(srv.url, srv.key, tmp_path / "runs", upload_timeout=1.0, stderr=err)
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


def test_a_script_that_never_calls_finish_uploads_everything_at_exit(
    srv: LoopbackServer, tmp_path: Path
) -> None:
    # finish() then runs from atexit, after the interpreter stopped starting
    # worker threads: the upload must still complete and close cleanly.
    code = """
        import sys, pipeline
        run = pipeline.init(project=sys.argv[1], dir=sys.argv[2], mode="online",
                            server=sys.argv[3], api_key=sys.argv[4], settings={"quiet": True})
        for i in range(300):
            run.log({"loss": float(i)})
        print(run.id)
        """
    done = run_python(
        code,
        P,
        str(tmp_path / "runs"),
        srv.url,
        srv.key,
        env={"RUNBUS_CONFIG_DIR": str(tmp_path / "config")},
    )
    assert done.returncode == 0, done.stderr
    assert "failed to close" not in done.stderr
    run_id = done.stdout.strip()
    api = Api(srv.url, srv.key)
    assert _steps(api, run_id) == list(range(300))
    assert api.run(P, run_id)["state"] == "finished"
