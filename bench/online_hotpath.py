"""Does online mode slow ``run.log()``? (A benchmark, not a test.)

Starts ``runbus server`` in a child process on a free loopback port, then logs
the same 10-float rows offline and online (HTTP sink on) and prints the
calling thread's ``log()`` p50/p99 for each, and how long ``finish()`` waits
for the upload to catch up.

    PYTHONPATH=src .venv/bin/python bench/online_hotpath.py [--steps 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time

import pipeline
from pipeline.testing import QUIET_SETTINGS

KEYS = [f"train/m{k}" for k in range(10)]


def start_server(data: str) -> tuple[subprocess.Popen[str], str, str]:
    """A ``runbus server`` child on port 0, with its URL and first admin key."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "server", "--port", "0", "--data", data],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"(http://\S+)/login\?token=(\S+)", line)
        if found:
            return proc, found.group(1), found.group(2)
    raise RuntimeError("the server exited before printing its login URL")


def measure(mode: str, steps: int, url: str | None, key: str | None) -> str:
    rng = random.Random(0)
    rows = [{k: rng.random() for k in KEYS} for _ in range(1000)]
    run = pipeline.init(
        project="bench",
        dir=tempfile.mkdtemp(),
        mode=mode,
        server=url,
        api_key=key,
        settings=QUIET_SETTINGS,
    )
    lat: list[int] = []
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for i in range(steps):
        row = rows[i % 1000]
        t = clock()
        run.log(row)
        lat.append(clock() - t)
    loop = time.perf_counter() - start
    before_finish = time.perf_counter()
    run.finish()
    done = time.perf_counter() - before_finish
    lat.sort()
    p50, p99 = lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000
    return f"| {mode} | {p50:.2f} us | {p99:.2f} us | {loop:.2f} s | {done:.2f} s |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--steps", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as data:
        proc, url, key = start_server(data)
        try:
            print("| mode | log() p50 | log() p99 | log loop | finish() |")
            print("|------|-----------|-----------|----------|----------|")
            print(measure("offline", args.steps, None, None))
            print(measure("online", args.steps, url, key))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
