"""How fast ``runbus server`` is ready to serve, and how fast SIGTERM stops it.

    PYTHONPATH=src .venv/bin/python bench/server_startup.py [--repeat 10] [--pg URL]

Each measurement starts a fresh child ``python -m pipeline.cli server --port 0``
(the console script does the same) and times, from the moment it is spawned:

- ``listening``: until it prints ``runbus server listening on`` (its last
  startup line, printed once the socket is bound);
- ``first answer``: until ``GET /api/v1/health`` first answers 200;
- ``stop``: from SIGTERM to the process's exit, idle server.

Two cases: a *first start* (empty data directory: the schema is created and
the first admin key made) and a *restart* (the database exists). With ``--pg``
the same runs over PostgreSQL, each repeat in a throwaway schema. Interpreter
start-up and imports are included: that is what an operator waits for. The
``in-process`` rows split a first start on SQLite, timed inside the child, into
module imports, the startup work (open and migrate the store, make the admin
key, bind), and an idle stop. Goal (issue): ready in under a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path


def start(data: Path, db: str | None) -> tuple[subprocess.Popen[str], float, float]:
    """Spawn a server; return it with the seconds until it listened and first answered."""
    cmd = [sys.executable, "-m", "pipeline.cli", "server", "--port", "0", "--data", str(data)]
    if db:
        cmd += ["--db", db]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.match(r"runbus server listening on (\S+)", line)
        if found:
            listening = time.perf_counter() - t0
            url = found.group(1) + "/api/v1/health"
            break
    else:
        raise RuntimeError(f"the server exited with {proc.wait()} before listening")
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            continue
    return proc, listening, time.perf_counter() - t0


def stop(proc: subprocess.Popen[str]) -> float:
    """SIGTERM an idle server; seconds until it exited."""
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    proc.stdout.read()
    code = proc.wait()
    if code != 0:
        raise RuntimeError(f"the server exited with {code} on SIGTERM")
    return time.perf_counter() - t0


# Run in a child: where a start's time goes, timed inside the process.
_PHASES = """
import time; t0 = time.perf_counter()
import asyncio, sys, tempfile
from server.main import serve
t1 = time.perf_counter()
async def go():
    ready, stop = asyncio.Event(), asyncio.Event()
    data = tempfile.mkdtemp()
    task = asyncio.create_task(serve("127.0.0.1", 0, None, data, ready=ready, stop=stop))
    await ready.wait(); t2 = time.perf_counter()
    stop.set(); await task; t3 = time.perf_counter()
    print(t1 - t0, t2 - t1, t3 - t2, file=sys.stderr)
asyncio.run(go())
"""


def phases() -> tuple[float, float, float]:
    """(imports, startup work, stop) of a first start on SQLite, timed in the child."""
    done = subprocess.run(
        [sys.executable, "-c", _PHASES], capture_output=True, text=True, check=True
    )
    imports, work, stopping = (float(x) for x in done.stderr.split()[-3:])
    return imports, work, stopping


async def _pg(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def measure(repeat: int, pg: str | None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            db = None
            schema = f"runbus_bench_{uuid.uuid4().hex[:10]}"
            if pg:
                asyncio.run(_pg(pg, f'CREATE SCHEMA "{schema}"'))
                db = pg + ("&" if "?" in pg else "?") + f"search_path={schema}"
            try:
                for case in ("first start", "restart"):
                    proc, listening, answered = start(Path(tmp), db)
                    out.setdefault(f"{case}: listening", []).append(listening)
                    out.setdefault(f"{case}: first answer", []).append(answered)
                    out.setdefault(f"{case}: stop", []).append(stop(proc))
            finally:
                if pg:
                    asyncio.run(_pg(pg, f'DROP SCHEMA "{schema}" CASCADE'))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--pg", default=None, help="also over PostgreSQL at this URL")
    args = ap.parse_args()
    backends = [("sqlite", None)] + ([("postgres", args.pg)] if args.pg else [])
    print(f"{'backend':<9} {'measure':<26} {'median':>8} {'min':>8} {'max':>8}  (n={args.repeat})")
    rows: list[tuple[str, str, list[float]]] = []
    for name, pg in backends:
        rows += [(name, what, values) for what, values in measure(args.repeat, pg).items()]
    inside = [phases() for _ in range(args.repeat)]
    for i, what in enumerate(
        ("in-process: imports", "in-process: startup work", "in-process: stop")
    ):
        rows.append(("sqlite", what, [p[i] for p in inside]))
    for name, what, values in rows:
        print(
            f"{name:<9} {what:<26} {statistics.median(values) * 1000:>6.0f}ms"
            f" {min(values) * 1000:>6.0f}ms {max(values) * 1000:>6.0f}ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
