"""Tables, histograms and plots: what logging them costs the calling thread.

The goal (issue 4): constructing a 10,000-row table and passing it to
``run.log()`` costs the caller at most 20 ms. The encoding (JSON, the file)
runs on the media worker and is not counted; ``finish()`` (which waits for it)
is reported separately.

Each case is timed with ``perf_counter`` around construct + ``run.log`` (the
rows themselves are built beforehand: they are the user's data), repeated, and
reported as p50 and max:

* ``table 10k x 5``: ``Table(columns, data)`` of int, float, float, str, bool;
* ``table 10k add_data``: the same rows added one by one with ``add_data``;
* ``table 10k dataframe``: ``Table(dataframe=df)`` (if pandas is installed);
* ``histogram 1M array``: ``Histogram(np array of 1,000,000 floats)``;
* ``plot.line_series 3 x 10k``: three 10,000-point lines.

Run with the project venv::

    PYTHONPATH=src .venv/bin/python bench/media_table.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import pipeline
from pipeline import plot
from pipeline.media.histogram import Histogram
from pipeline.media.table import Table
from pipeline.testing import QUIET_SETTINGS

GOAL_TABLE_S = 0.020
SETTINGS = QUIET_SETTINGS
COLUMNS = ["step", "loss", "acc", "label", "correct"]


def rows(n: int) -> list[list[Any]]:
    rng = random.Random(0)
    return [[i, rng.random(), rng.random(), f"class_{i % 10}", i % 3 == 0] for i in range(n)]


def timed(run: pipeline.Run, make: Callable[[], dict[str, Any]], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run.log(make())
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    data = rows(10_000)

    def by_add_data() -> dict[str, Any]:
        table = Table(columns=COLUMNS)
        for r in data:
            table.add_data(*r)
        return {"t": table}

    arr = np.random.default_rng(0).normal(size=1_000_000)
    xs = list(range(10_000))
    ys = [[random.random() for _ in xs] for _ in range(3)]
    cases: list[tuple[str, Callable[[], dict[str, Any]], float | None]] = [
        ("table 10k x 5", lambda: {"t": Table(columns=COLUMNS, data=data)}, GOAL_TABLE_S),
        ("table 10k add_data", by_add_data, None),
        ("histogram 1M array", lambda: {"h": Histogram(arr)}, None),
        ("plot.line_series 3 x 10k", lambda: {"p": plot.line_series(xs, ys)}, None),
    ]
    try:
        import pandas as pd

        df = pd.DataFrame(data, columns=COLUMNS)
        cases.insert(2, ("table 10k dataframe", lambda: {"t": Table(dataframe=df)}, None))
    except ImportError:
        print("(pandas not installed: dataframe case skipped)")

    print(f"{'case':<28} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8} {'goal':>8}  finish s")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make, goal in cases:
            run = pipeline.init(project="bench", dir=tmp, settings=SETTINGS)
            make()  # warm-up: imports, first-call caches
            times = timed(run, make, args.repeats)
            t0 = time.perf_counter()
            run.finish()
            fin = time.perf_counter() - t0
            p50 = statistics.median(times)
            p90 = statistics.quantiles(times, n=10)[-1]
            mark = "" if goal is None else ("ok" if p50 <= goal else "MISSED")
            goal_s = "" if goal is None else f"{goal * 1e3:.0f} {mark}"
            print(
                f"{name:<28} {p50 * 1e3:8.2f} {p90 * 1e3:8.2f} {max(times) * 1e3:8.2f} "
                f"{goal_s:>8}  {fin:.2f}"
            )


if __name__ == "__main__":
    main()
