"""``kill -9`` at any moment loses nothing that ``run.flush()`` reported durable.

Each case starts ``crash_child.py`` (a real training loop in its own process),
reads what it reports, kills it with SIGKILL at a seeded random moment and then
reads the run directory back the way a user would, with ``pipeline.read_run``.
Cases run a few at a time: most of a case is interpreter start-up.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline

CHILD = Path(__file__).with_name("crash_child.py")
# The child must import the same code as this test, wherever that came from.
SRC = Path(next(iter(pipeline.__path__))).parent
SEED = 20_240_607
FLUSH_CASES = 50
BURST_CASES = 5
WORKERS = max(2, min(8, os.cpu_count() or 2))
# A child that says nothing for this long is hung: kill it and fail, not hang.
STALL_S = 30.0


@dataclass
class Killed:
    """What one case saw of its child before and after killing it."""

    root: Path  # the runs directory given to init(dir=...)
    run_dir: Path  # run.dir as the child reported it
    flushed: int  # highest step the child reported flushed, -1 if none
    stderr: Path


def _kill_child(case: Path, mode: str, seed: int) -> Killed:
    """Run the child in ``case`` and SIGKILL it at a point chosen by ``seed``."""
    rng = random.Random(seed)
    every = rng.choice([1, 2, 5, 20])
    # Settings vary too: compressed frames, and a short timer so periodic
    # (unrequested) writes also get cut by the kill.
    compress = rng.random() < 0.3
    interval = rng.choice([1.0, 0.02])
    if mode == "flush":
        lines = rng.randint(0, 15)
        delay = rng.choice([0.0, rng.uniform(0, 0.01), rng.uniform(0, 0.05)])
    else:
        lines, delay = 0, rng.uniform(0.05, 0.4)

    root = case / "runs"
    root.mkdir(parents=True)
    stderr = case / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBUS_")}  # stay offline
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    args = [mode, str(root), str(every), "1" if compress else "0", str(interval)]
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            cwd=case,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    stalled = threading.Event()

    def on_stall() -> None:
        stalled.set()
        proc.kill()

    watchdog = threading.Timer(STALL_S, on_stall)
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("ready "), _died(proc, stalled, stderr, "before init() returned")
        run_dir = Path(first.removeprefix("ready ").strip())
        flushed = -1
        for _ in range(lines):
            line = proc.stdout.readline()
            assert line.endswith("\n"), _died(proc, stalled, stderr, f"after step {flushed}")
            flushed = int(line)
        if delay:
            time.sleep(delay)  # not a wait for anything: it picks the moment of the kill
        proc.send_signal(signal.SIGKILL)
        # Reap it: a zombie would still look like a live writer to read_run.
        proc.wait()
        assert not stalled.is_set(), _died(proc, stalled, stderr, "")
        assert proc.returncode == -signal.SIGKILL, _died(proc, stalled, stderr, "before the kill")
        # Reports written before the kill but not yet read are durable steps too;
        # only whole lines count (a report is written in one call, but be strict).
        for line in proc.stdout:
            if line.endswith("\n"):
                flushed = max(flushed, int(line))
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return Killed(root, run_dir, flushed, stderr)


def _died(proc: subprocess.Popen[str], stalled: threading.Event, stderr: Path, when: str) -> str:
    if stalled.is_set():
        return f"the child printed nothing for {STALL_S:.0f} s; stderr:\n{stderr.read_text()}"
    if proc.poll() is None:
        proc.kill()  # alive but saying the wrong thing: stop it to read its exit
    proc.wait()
    return f"the child exited with {proc.returncode} {when}; stderr:\n{stderr.read_text()}"


def _find_run_dir(root: Path) -> Path:
    """The run directory as a user finds it: latest-run, else the only run-*."""
    latest = root / "latest-run"
    if latest.is_symlink():
        return latest.resolve()
    found = sorted(root.glob("run-*"))
    assert len(found) == 1, f"expected one run directory in {root}, found {found}"
    return found[0]


def _assert_prefix_of_the_log(history: list[dict[str, Any]]) -> None:
    """Rows are steps 0..n-1 once each, in order, holding what was logged."""
    steps = [row["_step"] for row in history]
    assert steps == list(range(len(steps))), f"steps read back: {steps}"
    for row in history:
        step = row["_step"]
        assert row["i"] == step, row
        assert row["x"] == float(step), row
        assert type(row["x"]) is float, row


def _run_cases(tmp_path: Path, mode: str, count: int, check: Callable[[Killed], None]) -> None:
    """Run ``count`` seeded cases in parallel; report every failing seed at once."""

    def one(n: int) -> None:
        killed = _kill_child(tmp_path / f"case{n:02d}", mode, SEED + n)
        try:
            check(killed)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nchild stderr:\n{killed.stderr.read_text()}") from exc

    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {n: pool.submit(one, n) for n in range(count)}
    failures = []
    for n, fut in futures.items():
        exc = fut.exception()
        if exc is not None:
            failures.append(f"case {n} (seed {SEED + n}, {tmp_path / f'case{n:02d}'}): {exc!r}")
    assert not failures, f"{len(failures)} of {count} cases failed:\n" + "\n\n".join(failures)


def test_kill_9_loses_nothing_that_was_flushed(tmp_path: Path) -> None:
    def check(killed: Killed) -> None:
        run_dir = _find_run_dir(killed.root)
        assert run_dir == killed.run_dir.resolve()
        data = pipeline.read_run(run_dir)  # must not raise
        _assert_prefix_of_the_log(data.history)
        assert len(data.history) > killed.flushed, (
            f"step {killed.flushed} was reported flushed, "
            f"but only {len(data.history)} rows read back"
        )
        assert data.state == "crashed"
        # A killed process can only leave a torn tail, never a damaged frame.
        assert data.corrupt == 0
        assert not data.refused

    _run_cases(tmp_path, "flush", FLUSH_CASES, check)


def test_kill_9_during_a_burst_of_unflushed_writes(tmp_path: Path) -> None:
    def check(killed: Killed) -> None:
        data = pipeline.read_run(_find_run_dir(killed.root))  # must not raise
        _assert_prefix_of_the_log(data.history)

    _run_cases(tmp_path, "burst", BURST_CASES, check)
