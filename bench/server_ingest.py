"""Server benchmark over HTTP: ingest rate, history latency and memory, runbus against MLflow.

    PYTHONPATH=src .venv/bin/python bench/server_ingest.py [--backends sqlite,postgres]
        [--steps 20000] [--points 1000000] [--rounds 3] [--repeat 20]
        [--mlflow-workers 1,4] [--no-mlflow] [--pg URL] [--json]

Every figure is taken over HTTP, against a server in a child process on
loopback, on this machine, in this one invocation:

* ``runbus server`` (``--port 0``, a temporary data directory, the admin key it
  prints), on SQLite and on PostgreSQL (a throwaway schema of ``--pg``, dropped
  afterwards). Ingest: batches of 1,000 steps x 10 metrics (10,000 values a
  request) in the events format of docs/server-api.md, gzip-compressed JSON as
  the HTTP sink's uploader sends them, from 1 client (one run) and from 4
  concurrent clients (4 runs, a quarter of the steps each). Request bodies are
  encoded before the clock starts, so the figure is the server's rate, not the
  client's encoder. Then the history of one 20,000-point series (raw, like
  MLflow's get-history, and as the 1,000 buckets a chart asks for), one
  ``--points``-point series into 1,000 buckets, and a live cursor fetch of its
  last 10 points; medians over ``--repeat`` requests, timed to the response's
  last byte. Server memory: its peak RSS (VmHWM) and RSS at the end.
* The MLflow tracking server (``mlflow server --backend-store-uri
  sqlite:///...``) from ``bench/.venv-mlflow``, with ``--workers 1`` driven by
  one client and ``--workers 4`` by four. Its REST ``runs/log-batch`` takes at
  most 1,000 metrics a request, so each request carries 100 steps x 10 metrics
  (1,000 values), plain JSON. ``metrics/get-history`` returns one 20,000-point
  series. Memory: RSS summed over its process tree (CLI, uvicorn workers, job
  runner), sampled every 0.1 s: peak and end.

MLflow lives in its own venv so its dependencies never touch the project's:

    python3 -m venv bench/.venv-mlflow
    bench/.venv-mlflow/bin/pip install mlflow==3.17.2

Without it the MLflow rows are skipped with a message saying so. The machine is
shared by client and server: on 2 cores the client's own sending competes with
the server it measures (the same for both servers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import aiohttp
import orjson
import psutil

from _workload import SPEC, machine_info, md_table, write_json
from pipeline import jsoncodec

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MLFLOW_VENV = BENCH_DIR / ".venv-mlflow"
MLFLOW_SETUP = (
    "python3 -m venv bench/.venv-mlflow && bench/.venv-mlflow/bin/pip install mlflow==3.17.2"
)
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
PROJECT = "bench"
#: The series every history figure reads.
HISTORY_KEY = "train/loss"
#: A ``runbus server`` batch: 1,000 steps x 10 metrics.
RUNBUS_BATCH_STEPS = 1000
#: MLflow's log-batch takes at most 1,000 metrics: 100 steps x 10.
MLFLOW_BATCH_STEPS = 100
#: Events per request when loading the big single-key series (the server's max_batch_events).
BIG_BATCH_EVENTS = 10_000
T0 = 1.7e9  # event timestamps start here (seconds)

# ---------------------------------------------------------------------------
# Child processes and their memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Output(threading.Thread):
    """Drains a child's stdout (so a chatty child never blocks on a full pipe).

    Lines go to a queue for whoever waits for one; the last 40 are kept for
    error messages.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: Queue[str | None] = Queue()
        self.tail: deque[str] = deque(maxlen=40)
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip())
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no line matching {pattern.pattern!r} in {timeout:g} s")
            try:
                line = self.lines.get(timeout=left)
            except Empty:
                continue
            if line is None:
                raise RuntimeError("the server exited while starting:\n" + "\n".join(self.tail))
            found = pattern.search(line)
            if found:
                return found


def _stop(proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """SIGTERM the child's own process group (it was started as its leader), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def proc_memory(pid: int) -> dict[str, int]:
    """Bytes of ``VmRSS``, ``VmHWM`` (peak RSS), ``RssAnon`` and ``RssFile`` of one process.

    ``RssFile`` is file-backed pages (SQLite's mmap of the database, shared
    libraries); ``RssAnon`` is the heap, SQLite's page cache included.
    """
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        # Not Linux: RSS only, and the peak is unknown.
        rss = int(psutil.Process(pid).memory_info().rss)
        return {"VmRSS": rss}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[name] = int(rest.split()[0]) * 1024
    return out


def tree_rss(pid: int) -> int:
    """RSS summed over a process and all its descendants (bytes; 0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += int(p.memory_info().rss)
    return total


class TreeSampler:
    """Samples :func:`tree_rss` of ``pid`` every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        rss = tree_rss(self.pid)
        if rss:
            self.last = rss
            self.peak = max(self.peak, rss)
        return rss

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class RunbusServer:
    """``runbus server`` in a child process on a free loopback port, with its first admin key.

    ``db``: a SQLite path or a ``postgresql://`` URL (default: SQLite in ``data``).
    The child imports this checkout's ``src/``.
    """

    def __init__(self, data: Path, db: str | None = None) -> None:
        env = dict(os.environ)
        for name in ("RUNBUS_SERVER", "RUNBUS_API_KEY", "RUNBUS_DIR", "RUNBUS_MODE"):
            env.pop(name, None)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p
        )
        cmd = [sys.executable, "-m", "pipeline.cli", "server", "--host", "127.0.0.1"]
        cmd += ["--port", "0", "--data", str(data)]
        if db is not None:
            cmd += ["--db", db]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self._out = _Output(self.proc)
        try:
            # The first start prints an admin key before "listening on <url>" (ready).
            found = self._out.wait_for(re.compile(r"token=(\S+)|listening on (http://\S+)"), 300)
            key, url = found.group(1), found.group(2)
            if url is None:
                url = self._out.wait_for(re.compile(r"listening on (http://\S+)"), 300).group(1)
            self.url: str = url
            self.key: str = key or self._create_key(env, cmd[cmd.index("--data") :])
        except BaseException:
            _stop(self.proc)
            raise

    @staticmethod
    def _create_key(env: dict[str, str], store_args: list[str]) -> str:
        """An admin key for a database that already has keys (a reused store)."""
        cmd = [sys.executable, "-m", "pipeline.cli", "server", "keys", "create", "--admin"]
        made = subprocess.run(
            [*cmd, "--name", "bench", *store_args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0 or not made.stdout.strip():
            raise RuntimeError(f"could not create an API key: {made.stderr.strip()}")
        return made.stdout.strip().splitlines()[-1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory(self) -> dict[str, int]:
        """:func:`proc_memory` of the server process."""
        return proc_memory(self.proc.pid)

    def close(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> RunbusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.asynccontextmanager
async def pg_schema(url: str) -> AsyncIterator[str]:
    """A throwaway schema in the database at ``url``; yields a URL whose connections use it.

    asyncpg passes unknown URL parameters to the server as settings, so
    ``?search_path=`` puts a ``runbus server`` child in the schema.
    """
    import asyncpg  # the server extra; only PostgreSQL runs need it

    schema = f"runbus_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in url else "?"
        try:
            yield f"{url}{sep}search_path={schema}"
        finally:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def pg_reachable(url: str) -> str | None:
    """None when PostgreSQL at ``url`` answers, else why not."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[server]')"
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), 10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        return f"cannot connect to {url}: {e}"
    await conn.close()
    return None


# ---------------------------------------------------------------------------
# HTTP helpers


class Api:
    """A runbus server's API with one key: JSON in, JSON out, errors raised with the body."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self.session = session
        self.base = f"{url}/api/v1"
        self.headers = {"Authorization": f"Bearer {key}"}

    async def raw(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        gzipped: bool = False,
        accept_gzip: bool = True,
        **params: Any,
    ) -> bytes:
        headers = dict(self.headers)
        if not accept_gzip:
            # aiohttp asks for gzip by default, as browsers do; this asks for plain bytes.
            headers["Accept-Encoding"] = "identity"
        if data is not None:
            headers["Content-Type"] = "application/json"
            if gzipped:
                headers["Content-Encoding"] = "gzip"
        # A list value repeats the parameter (``filter=a&filter=b``).
        query = [
            (k, str(x))
            for k, v in params.items()
            if v is not None
            for x in (v if isinstance(v, list) else [v])
        ]
        async with self.session.request(
            method, self.base + path, data=data, headers=headers, params=query
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {body[:300]!r}")
            return body

    async def get(self, path: str, **params: Any) -> Any:
        return jsoncodec.loads(await self.raw("GET", path, **params))

    async def post(self, path: str, obj: Any) -> Any:
        return jsoncodec.loads(await self.raw("POST", path, data=jsoncodec.dumps(obj)))

    async def create_run(self, run_id: str, **fields: Any) -> None:
        await self.post(f"/projects/{PROJECT}/runs", {"id": run_id, **fields})

    async def post_events(self, run_id: str, body: bytes) -> int:
        """POST one gzip-compressed events body; the server's ``last_seq``."""
        got = orjson.loads(
            await self.raw(
                "POST", f"/projects/{PROJECT}/runs/{run_id}/events", data=body, gzipped=True
            )
        )
        return int(got["last_seq"])


def p50(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


#: Seconds one query's repeats may take in all; a slow query stops early (after 3 timings).
QUERY_BUDGET_S = 30.0


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    """Up to ``repeat`` timings (seconds) of ``call()`` after one untimed warm-up; its last result.

    Stops after 3 timings once :data:`QUERY_BUDGET_S` is spent, so a slow
    query cannot hold the run for many minutes.
    """
    last = await call()
    times: list[float] = []
    for _ in range(repeat):
        t = time.perf_counter()
        last = await call()
        times.append(time.perf_counter() - t)
        if len(times) >= 3 and sum(times) > QUERY_BUDGET_S:
            break
    return times, last


# ---------------------------------------------------------------------------
# Workload


def row_values(rnd: random.Random) -> dict[str, float]:
    """One step's 10 metrics (the hot-path workload's names and scales)."""
    return {k: rnd.random() * scale for k, scale in SPEC}


def runbus_bodies(steps: int, seed: str) -> list[bytes]:
    """The gzip-compressed events bodies of a run of ``steps`` steps, 1,000 steps each.

    Encoded as the uploader does: ``jsoncodec`` JSON, gzip level 5.
    """
    rnd = random.Random(seed)
    bodies = []
    for s0 in range(0, steps, RUNBUS_BATCH_STEPS):
        events = [
            ["row", s + 1, T0 + s * 0.01, {"step": s, "runtime": s * 0.01, "data": row_values(rnd)}]
            for s in range(s0, min(steps, s0 + RUNBUS_BATCH_STEPS))
        ]
        bodies.append(gzip.compress(jsoncodec.dumps({"events": events}), 5))
    return bodies


def big_series_bodies(points: int, seed: int) -> Iterator[bytes]:
    """Bodies of one ``HISTORY_KEY`` value a step for ``points`` steps (10,000 events a request)."""
    rnd = random.Random(seed)
    for s0 in range(0, points, BIG_BATCH_EVENTS):
        events = [
            [
                "row",
                s + 1,
                T0 + s * 0.01,
                {"step": s, "runtime": s * 0.01, "data": {HISTORY_KEY: rnd.random()}},
            ]
            for s in range(s0, min(points, s0 + BIG_BATCH_EVENTS))
        ]
        yield gzip.compress(jsoncodec.dumps({"events": events}), 5)


def mlflow_bodies(run_id: str, steps: int, seed: int) -> list[bytes]:
    """log-batch bodies for ``steps`` steps of 10 metrics, 100 steps (1,000 values) each."""
    rnd = random.Random(seed)
    bodies = []
    for s0 in range(0, steps, MLFLOW_BATCH_STEPS):
        metrics = []
        for s in range(s0, min(steps, s0 + MLFLOW_BATCH_STEPS)):
            ts = int((T0 + s * 0.01) * 1000)
            for k, v in row_values(rnd).items():
                metrics.append({"key": k, "value": v, "timestamp": ts, "step": s})
        bodies.append(orjson.dumps({"run_id": run_id, "metrics": metrics}))
    return bodies


# ---------------------------------------------------------------------------
# runbus


@dataclass
class Result:
    """One server configuration's figures (None: not measured)."""

    server: str
    backend: str
    workers: int
    ingest_1: list[float]  # values/s, one client, per round
    ingest_4: list[float]  # values/s, 4 clients, per round
    hist20k_raw: list[float]  # seconds per request
    hist20k_plain: list[float] | None = None  # raw, response not gzipped
    hist20k_buckets: list[float] | None = None
    big_load: float | None = None  # values/s loading the big series
    big_buckets: list[float] | None = None
    live: list[float] | None = None
    rss_peak: int = 0
    rss_end: int = 0
    rss_note: str = ""


async def _ingest_clients(
    start: Callable[[int], Awaitable[Callable[[], Awaitable[None]]]], clients: int
) -> float:
    """Prepare ``clients`` clients (untimed), then run them at once; the wall time in seconds.

    ``start(i)`` does client ``i``'s set-up (session, run) and returns its timed part.
    """
    parts = await asyncio.gather(*(start(i) for i in range(clients)))
    t = time.perf_counter()
    await asyncio.gather(*(p() for p in parts))
    return time.perf_counter() - t


async def runbus_ingest(url: str, key: str, steps: int, clients: int, tag: str) -> float:
    """Values per second for ``clients`` runs sent at once, ``steps // clients`` steps each."""
    per = steps // clients
    bodies = [runbus_bodies(per, seed=f"{tag}-{i}") for i in range(clients)]
    sessions: list[aiohttp.ClientSession] = []

    async def start(i: int) -> Callable[[], Awaitable[None]]:
        s = aiohttp.ClientSession()
        sessions.append(s)
        api = Api(s, url, key)
        run_id = f"{tag}-{i}"
        await api.create_run(run_id, config={"clients": clients})

        async def send() -> None:
            for b in bodies[i]:
                await api.post_events(run_id, b)

        return send

    try:
        dt = await _ingest_clients(start, clients)
    finally:
        for s in sessions:
            await s.close()
    return per * clients * len(SPEC) / dt


async def bench_runbus(
    backend: str, db: str | None, args: argparse.Namespace, say: Callable[[str], None]
) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="runbus-bench-") as tmp,
        RunbusServer(Path(tmp) / "data", db) as srv,
    ):
        res = Result("runbus", backend, 1, [], [], [])
        for r in range(args.rounds):
            res.ingest_1.append(await runbus_ingest(srv.url, srv.key, args.steps, 1, f"one{r}"))
            res.ingest_4.append(await runbus_ingest(srv.url, srv.key, args.steps, 4, f"four{r}"))
            say(
                f"  round {r + 1}: 1 client {res.ingest_1[-1]:,.0f} values/s, "
                f"4 clients {res.ingest_4[-1]:,.0f} values/s"
            )
        async with aiohttp.ClientSession() as s:
            api = Api(s, srv.url, srv.key)
            hist = f"/projects/{PROJECT}/runs/one0-0/history"

            async def raw20k() -> Any:
                return await api.raw("GET", hist, keys=HISTORY_KEY, after=-1)

            res.hist20k_raw, body = await timed(args.repeat, raw20k)
            got = len(jsoncodec.loads(body)["series"][0]["x"])
            if got != args.steps:
                raise RuntimeError(f"raw history returned {got} points, expected {args.steps}")

            async def plain20k() -> Any:
                return await api.raw("GET", hist, keys=HISTORY_KEY, after=-1, accept_gzip=False)

            res.hist20k_plain, _ = await timed(args.repeat, plain20k)

            async def buckets20k() -> Any:
                return await api.raw("GET", hist, keys=HISTORY_KEY, buckets=1000)

            res.hist20k_buckets, _ = await timed(args.repeat, buckets20k)
            say(
                f"  {args.steps:,}-point history: raw p50 {p50(res.hist20k_raw) * 1e3:.1f} ms "
                f"({p50(res.hist20k_plain) * 1e3:.1f} ms not gzipped), "
                f"1,000 buckets p50 {p50(res.hist20k_buckets) * 1e3:.1f} ms"
            )

            await api.create_run("big")
            t = time.perf_counter()
            encode = 0.0
            bodies = big_series_bodies(args.points, seed=7)
            while True:
                e0 = time.perf_counter()
                b = next(bodies, None)
                encode += time.perf_counter() - e0
                if b is None:
                    break
                await api.post_events("big", b)
            res.big_load = args.points / (time.perf_counter() - t - encode)
            big = f"/projects/{PROJECT}/runs/big/history"

            async def bucketed() -> Any:
                return await api.raw("GET", big, keys=HISTORY_KEY, buckets=1000)

            res.big_buckets, body = await timed(args.repeat, bucketed)
            series = jsoncodec.loads(body)["series"][0]
            if not series["downsampled"] or len(series["x"]) != 1000:
                raise RuntimeError(f"expected 1,000 buckets, got {len(series['x'])}")

            async def live() -> Any:
                return await api.raw("GET", big, keys=HISTORY_KEY, after=args.points - 11)

            res.live, body = await timed(args.repeat, live)
            if len(jsoncodec.loads(body)["series"][0]["x"]) != 10:
                raise RuntimeError("the live fetch did not return the last 10 points")
            say(
                f"  {args.points:,}-point series (loaded at {res.big_load:,.0f} values/s, one "
                f"key a step): 1,000 buckets p50 {p50(res.big_buckets) * 1e3:.1f} ms, "
                f"live cursor p50 {p50(res.live) * 1e3:.2f} ms"
            )
        mem = srv.memory()
        res.rss_peak = mem.get("VmHWM", 0)
        res.rss_end = mem.get("VmRSS", 0)
        if "RssAnon" in mem:
            res.rss_note = (
                f"end: {mem['RssAnon'] / 1e6:.0f} MB anon + {mem['RssFile'] / 1e6:.0f} MB file"
            )
    return res


# ---------------------------------------------------------------------------
# MLflow


def mlflow_status() -> tuple[Path | None, str]:
    """The ``mlflow`` executable of bench/.venv-mlflow and its version, or None and why not."""
    exe = MLFLOW_VENV / "bin" / "mlflow"
    if not exe.exists():
        return None, f"bench/.venv-mlflow not found; create it with: {MLFLOW_SETUP}"
    probe = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return None, f"{exe} --version failed: {probe.stderr.strip()[-200:]}"
    return exe, probe.stdout.strip()


class MlflowServer:
    """``mlflow server`` on SQLite in ``tmp``, on a free port, with ``workers`` worker processes."""

    def __init__(self, exe: Path, tmp: Path, workers: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env["DO_NOT_TRACK"] = "true"
        cmd = [str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}"]
        cmd += ["--default-artifact-root", str(tmp / "artifacts"), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(workers)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
        self._out = _Output(self.proc)
        self.sampler = TreeSampler(self.proc.pid)

    async def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("mlflow server exited:\n" + "\n".join(self._out.tail))
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{self.url}/health") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server not ready in {timeout:g} s")
                await asyncio.sleep(0.25)

    def close(self) -> None:
        self.sampler.close()
        _stop(self.proc)


async def _mlflow_call(s: aiohttp.ClientSession, url: str, path: str, body: bytes) -> Any:
    async with s.post(
        f"{url}/api/2.0/mlflow/{path}", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        data = await r.read()
        if r.status != 200:
            raise RuntimeError(f"MLflow {path} -> {r.status}: {data[:300]!r}")
        return orjson.loads(data)


async def mlflow_ingest(url: str, steps: int, clients: int, tag: str) -> tuple[float, str]:
    """Values per second for ``clients`` runs at once, ``steps // clients`` steps each; a run id."""
    per = steps // clients
    sessions: list[aiohttp.ClientSession] = []
    run_ids: list[str] = []
    async with aiohttp.ClientSession() as s:
        exp = await _mlflow_call(s, url, "experiments/create", orjson.dumps({"name": tag}))
    exp_id = exp["experiment_id"]

    async def start(i: int) -> Callable[[], Awaitable[None]]:
        s = aiohttp.ClientSession()
        sessions.append(s)
        created = await _mlflow_call(
            s,
            url,
            "runs/create",
            orjson.dumps({"experiment_id": exp_id, "start_time": int(T0 * 1000)}),
        )
        run_id = created["run"]["info"]["run_id"]
        run_ids.append(run_id)
        bodies = mlflow_bodies(run_id, per, seed=i)

        async def send() -> None:
            for b in bodies:
                await _mlflow_call(s, url, "runs/log-batch", b)

        return send

    try:
        dt = await _ingest_clients(start, clients)
    finally:
        for s in sessions:
            await s.close()
    return per * clients * len(SPEC) / dt, run_ids[0]


async def mlflow_history(url: str, run_id: str) -> int:
    """Fetch one metric's whole history (every page); the number of points."""
    n = 0
    token: str | None = None
    async with aiohttp.ClientSession() as s:
        while True:
            params = {"run_id": run_id, "metric_key": HISTORY_KEY}
            if token:
                params["page_token"] = token
            async with s.get(f"{url}/api/2.0/mlflow/metrics/get-history", params=params) as r:
                data = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"MLflow get-history -> {r.status}: {data[:300]!r}")
            got = orjson.loads(data)
            n += len(got.get("metrics", []))
            token = got.get("next_page_token")
            if not token:
                return n


async def bench_mlflow(
    exe: Path, workers: int, args: argparse.Namespace, say: Callable[[str], None]
) -> Result:
    clients = 1 if workers == 1 else 4
    with tempfile.TemporaryDirectory(prefix="mlflow-bench-") as tmp:
        srv = MlflowServer(exe, Path(tmp), workers)
        try:
            await srv.wait_ready()
            res = Result("MLflow", "SQLite", workers, [], [], [])
            first_run = ""
            for r in range(args.mlflow_rounds):
                rate, run_id = await mlflow_ingest(
                    srv.url, args.mlflow_steps, clients, f"r{r}c{clients}"
                )
                (res.ingest_1 if clients == 1 else res.ingest_4).append(rate)
                first_run = first_run or run_id
                say(f"  round {r + 1}: {clients} client(s) {rate:,.0f} values/s")
            if clients == 1:
                # The history read needs a run of --mlflow-steps steps: the one-client run.
                res.hist20k_raw, n = await timed(
                    args.mlflow_repeat, lambda: mlflow_history(srv.url, first_run)
                )
                if n != args.mlflow_steps:
                    raise RuntimeError(
                        f"get-history returned {n} points, expected {args.mlflow_steps}"
                    )
                say(f"  {n:,}-point get-history p50 {p50(res.hist20k_raw) * 1e3:.0f} ms")
            srv.sampler.sample()
            res.rss_peak = srv.sampler.peak
            res.rss_end = srv.sampler.last
            procs = len(psutil.Process(srv.proc.pid).children(recursive=True)) + 1
            res.rss_note = f"sum over {procs} processes"
        finally:
            srv.close()
    return res


# ---------------------------------------------------------------------------
# Report


def _rate(v: list[float]) -> str:
    return f"{p50(v):,.0f}" if v else "-"


def _ms(v: list[float] | None, digits: int = 1) -> str:
    return f"{p50(v) * 1e3:.{digits}f} ms" if v else "-"


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n else "-"


def report(results: list[Result], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        name = r.server if r.server == "runbus" else f"MLflow, {r.workers} worker(s)"
        rows.append(
            [
                name,
                r.backend,
                _rate(r.ingest_1),
                _rate(r.ingest_4),
                _ms(r.hist20k_raw),
                _ms(r.hist20k_plain),
                _ms(r.hist20k_buckets),
                _ms(r.big_buckets),
                _ms(r.live, 2),
                _mb(r.rss_peak),
                _mb(r.rss_end),
            ]
        )
    table = md_table(
        [
            "server",
            "store",
            "ingest, 1 client (values/s)",
            "ingest, 4 clients (values/s)",
            f"{args.steps:,}-pt history, raw",
            "same, not gzipped",
            "same, 1,000 buckets",
            f"{args.points:,}-pt series -> 1,000 buckets",
            "live cursor",
            "peak RSS",
            "RSS at end",
        ],
        rows,
    )
    out = [table]
    notes = [f"- {r.server} {r.backend} ({r.workers}): {r.rss_note}" for r in results if r.rss_note]
    out += ["", "Memory notes:", *notes]
    ml1 = next((r for r in results if r.server == "MLflow" and r.workers == 1), None)
    ml4 = next((r for r in results if r.server == "MLflow" and r.workers > 1), None)
    ratios = []
    for r in results:
        if r.server != "runbus":
            continue
        if ml1 is not None and ml1.ingest_1 and r.ingest_1:
            ratios.append(
                f"- runbus {r.backend}, 1 client / MLflow 1 worker, 1 client: "
                f"{p50(r.ingest_1) / p50(ml1.ingest_1):.1f}x the values/s"
            )
        if ml4 is not None and ml4.ingest_4 and r.ingest_4:
            ratios.append(
                f"- runbus {r.backend} (one process), 4 clients / MLflow {ml4.workers} workers, "
                f"4 clients: {p50(r.ingest_4) / p50(ml4.ingest_4):.1f}x the values/s"
            )
        if ml1 is not None and ml1.hist20k_raw and r.hist20k_raw:
            ratios.append(
                f"- {args.steps:,}-point history (raw): runbus {r.backend} answers "
                f"{p50(ml1.hist20k_raw) / p50(r.hist20k_raw):.1f}x faster than MLflow"
            )
        for ml in (ml1, ml4):
            if ml is not None and ml.rss_peak and r.rss_peak:
                ratios.append(
                    f"- peak RSS: MLflow with {ml.workers} worker(s) takes "
                    f"{ml.rss_peak / r.rss_peak:.1f}x runbus {r.backend}'s"
                )
    if ratios:
        out += ["", "Ratios (medians):", *ratios]
    return "\n".join(out)


async def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--backends", default="sqlite,postgres", help="runbus stores: sqlite,postgres")
    ap.add_argument(
        "--steps", type=int, default=20_000, help="steps of 10 metrics per round and test"
    )
    ap.add_argument("--points", type=int, default=1_000_000, help="points of the big series")
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds for runbus (median shown)")
    ap.add_argument("--repeat", type=int, default=20, help="timed requests per runbus query")
    ap.add_argument("--mlflow-workers", default="1,4", help="MLflow --workers values to run")
    ap.add_argument("--mlflow-steps", type=int, default=None, help="default: --steps")
    ap.add_argument("--mlflow-rounds", type=int, default=1)
    ap.add_argument("--mlflow-repeat", type=int, default=5)
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--pg", default=PG_DEFAULT, help="PostgreSQL database for a throwaway schema")
    ap.add_argument("--json", action="store_true", help="also write bench/out/server_ingest-*.json")
    args = ap.parse_args()
    args.mlflow_steps = args.mlflow_steps or args.steps
    for name in ("steps", "mlflow_steps"):
        if getattr(args, name) % (4 * RUNBUS_BATCH_STEPS):
            ap.error(
                f"--{name.replace('_', '-')} must be a multiple of 4,000 "
                "(4 clients x 1,000-step batches)"
            )

    def say(line: str) -> None:
        print(line, flush=True)

    info = machine_info()
    say(f"machine: {info['nproc']} CPUs ({info['cpu']}), load {info['loadavg']}")
    say(f"runbus: {info['runbus']}")
    results: list[Result] = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            say("runbus server, SQLite")
            results.append(await bench_runbus("SQLite", None, args, say))
        elif backend == "postgres":
            why = await pg_reachable(args.pg)
            if why is not None:
                say(f"skipped: runbus server, PostgreSQL: {why}")
                continue
            say("runbus server, PostgreSQL")
            async with pg_schema(args.pg) as url:
                results.append(await bench_runbus("PostgreSQL", url, args, say))
        else:
            ap.error(f"unknown backend {backend!r}: use sqlite and/or postgres")
    if args.no_mlflow:
        say("skipped: MLflow (--no-mlflow)")
    else:
        exe, version = mlflow_status()
        if exe is None:
            say(f"skipped: MLflow: {version}")
        else:
            info["mlflow"] = version
            for workers in (int(w) for w in args.mlflow_workers.split(",")):
                say(f"{version} server, SQLite, --workers {workers}")
                results.append(await bench_mlflow(exe, workers, args, say))
    say("")
    say(report(results, args))
    info["loadavg_end"] = os.getloadavg()
    say(f"load at the end: {info['loadavg_end']}")
    if args.json:
        path = write_json(
            "server_ingest",
            {"machine": info, "args": vars(args), "results": [vars(r) for r in results]},
        )
        say(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
