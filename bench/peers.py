"""runbus against its peers on the same workload, all in one invocation.

Every measurement is a whole run, ``init -> finish returned``, of N steps of 10 float
scalars, in its own fresh child process and temp directory. Trackers run round-robin
(repeat 1 of every tracker and step count, then repeat 2, ...) so drift in machine
state hits all of them alike; the figures are medians over the repeats.

Run with the peers venv (see bench/README.md)::

    bench/.venv-peers/bin/python bench/peers.py [--steps 20000 100000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from _workload import (
    TRACKERS,
    Result,
    availability,
    fmt_mb,
    fmt_ms,
    fmt_rss,
    fmt_s,
    machine_info,
    md_table,
    median,
    spawn,
    verdict,
    write_json,
)

ORDER = ("runbus", "runbus-lean", "bare", "wandb", "wandb-lean", "trackio", "tensorboardX")
#: Goal: runbus whole run at least this many times faster than the peer.
SPEEDUP_GOALS = {"wandb": 25.0, "trackio": 4.0}
#: Goal: runbus whole run at most this many times the bare loop's.
BARE_GOAL = 3.0
BYTES_GOAL = 7_000_000
BYTES_STEPS = 20_000


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[20_000, 100_000], help="step counts")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each (tracker, steps)")
    ap.add_argument(
        "--trackers",
        nargs="+",
        default=list(ORDER),
        choices=list(ORDER),
        help="which trackers (default: all; each runs only where installed)",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child run")
    ap.add_argument("--json", action="store_true", help="write results to bench/out/")
    ap.add_argument("--keep", action="store_true", help="keep each run's temp directory")
    return ap.parse_args(argv)


def _aggregate(runs: list[Result], name: str, steps: int) -> Result | None:
    ok = [r for r in runs if r["tracker"] == name and r["steps"] == steps and "error" not in r]
    errors = [r for r in runs if r["tracker"] == name and r.get("steps") == steps and "error" in r]
    if not ok:
        return {"errors": len(errors), "error": errors[0]["error"]} if errors else None

    def med(key: str) -> float | None:
        vals = [r[key] for r in ok if r.get(key) is not None]
        return median(vals) if vals else None

    def top(key: str) -> int | None:
        vals = [r[key] for r in ok if r.get(key) is not None]
        return max(vals) if vals else None

    total = med("total_s")
    return {
        "n": len(ok),
        "errors": len(errors),
        "import_s": med("import_s"),
        "init_s": med("init_s"),
        "loop_s": med("loop_s"),
        "finish_s": med("finish_s"),
        "total_s": total,
        "total_s_all": [r["total_s"] for r in ok],
        "steps_per_s": steps / total if total else None,
        "exit_s": med("exit_s"),
        "after_s": med("after_s"),
        "rss_self_kib": top("rss_self_kib"),
        "rss_children_kib": top("rss_children_kib"),
        "rss_tree_after_finish_kib": top("rss_tree_after_finish_kib"),
        "bytes": med("bytes"),
        "files": med("files"),
        "largest_files": ok[0].get("largest_files"),
    }


def _paired_ratio(runs: list[Result], num: str, den: str, steps: int) -> float | None:
    """Median over repeats of total(num) / total(den), pairing runs of the same repeat."""
    by: dict[tuple[str, int], float] = {}
    for r in runs:
        if r["steps"] == steps and "error" not in r:
            by[(r["tracker"], r["repeat"])] = r["total_s"]
    ratios = [
        by[(num, rep)] / by[(den, rep)] for (name, rep) in by if name == num and (den, rep) in by
    ]
    return median(ratios) if ratios else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    info = machine_info()
    print(f"# runbus peers benchmark ({info['date']})\n")
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"loadavg {info['loadavg'][0]:.2f}; runbus at {info['runbus']}\n"
    )
    active: list[str] = []
    extra_env: dict[str, dict[str, str]] = {}
    availability_notes: dict[str, str] = {}
    for name in args.trackers:
        ok, note, env = availability(name)
        availability_notes[name] = note
        if ok:
            active.append(name)
            extra_env[name] = env
            print(f"running: {name} ({note})")
        else:
            print(f"skipped: {note}")
    print()
    sys.stdout.flush()

    runs: list[Result] = []
    total_runs = args.repeat * len(args.steps) * len(active)
    started = time.perf_counter()
    i = 0
    for rep in range(args.repeat):
        for steps in args.steps:
            for name in active:
                i += 1
                task = {"kind": "whole", "tracker": name, "steps": steps, "seed": rep}
                r = spawn(task, extra_env=extra_env[name], timeout=args.timeout, keep=args.keep)
                r["repeat"] = rep
                r["steps"] = steps
                runs.append(r)
                if "error" in r:
                    msg = f"ERROR {r['error']}: " + " / ".join(r.get("output", []))[-300:]
                else:
                    msg = f"init->finish {fmt_s(r['total_s'])}"
                print(
                    f"[{i}/{total_runs}] {name} {steps} steps: {msg}", file=sys.stderr, flush=True
                )
    elapsed = time.perf_counter() - started

    summary: dict[str, dict[int, Result | None]] = {
        name: {steps: _aggregate(runs, name, steps) for steps in args.steps} for name in active
    }
    goals: list[Result] = []

    for steps in args.steps:
        print(f"## Whole run, {steps:,} steps (median of {args.repeat})\n")
        rows: list[list[str]] = []
        for name in active:
            a = summary[name][steps]
            if a is None or a.get("total_s") is None:
                err = a.get("error", "failed") if a else "failed"
                rows.append([name, *(["-"] * 6), f"error: {err}"])
                continue
            if name == "runbus":
                rel = "1.00x"
            elif name == "runbus-lean":
                lean = _paired_ratio(runs, "wandb-lean", "runbus-lean", steps)
                rel = "n/a" if lean is None else f"{lean:.1f}x faster than wandb-lean"
                goals.append(
                    {
                        "goal": f"runbus-lean vs wandb-lean, {steps:,} steps (report)",
                        "measured": lean,
                        "met": None,
                    }
                )
            elif name == "bare":
                ratio = _paired_ratio(runs, "runbus", "bare", steps)
                rel = f"runbus takes {ratio:.2f}x (goal <= {BARE_GOAL:g}x)" if ratio else "n/a"
                goals.append(
                    {
                        "goal": f"runbus whole run <= {BARE_GOAL:g}x bare loop, {steps:,} steps",
                        "measured": ratio,
                        "met": None if ratio is None else ratio <= BARE_GOAL,
                    }
                )
            else:
                speed = _paired_ratio(runs, name, "runbus", steps)
                goal = SPEEDUP_GOALS.get(name)
                rel = "n/a" if speed is None else f"{speed:.1f}x faster"
                if goal is not None:
                    rel += f" (goal >= {goal:g}x)"
                    goals.append(
                        {
                            "goal": f"runbus >= {goal:g}x faster than {name}, {steps:,} steps",
                            "measured": speed,
                            "met": None if speed is None else speed >= goal,
                        }
                    )
                else:
                    goals.append(
                        {
                            "goal": f"runbus vs {name}, {steps:,} steps (report)",
                            "measured": speed,
                            "met": None,
                        }
                    )
            rows.append(
                [
                    name,
                    fmt_ms(a["import_s"]),
                    fmt_ms(a["init_s"]),
                    fmt_s(a["loop_s"]),
                    fmt_ms(a["finish_s"]),
                    fmt_s(a["total_s"]),
                    f"{a['steps_per_s']:,.0f}",
                    rel,
                ]
            )
        headers = [
            "tracker",
            "import",
            "init",
            "log loop",
            "finish",
            "init->finish",
            "steps/s",
            "runbus speed-up",
        ]
        print(md_table(headers, rows))
        print()

    rss_steps = max(args.steps)
    bytes_steps = BYTES_STEPS if BYTES_STEPS in args.steps else min(args.steps)
    print(f"## Memory ({rss_steps:,} steps) and bytes on disk ({bytes_steps:,} steps)\n")
    rows = []
    for name in active:
        a = summary[name][rss_steps]
        b = summary[name][bytes_steps]
        if a is None or "rss_self_kib" not in a or b is None or "bytes" not in b:
            rows.append([name, "-", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                name,
                fmt_rss(a["rss_self_kib"]),
                fmt_rss(a["rss_children_kib"]) if a["rss_children_kib"] else "none",
                fmt_rss(a["rss_tree_after_finish_kib"]),
                fmt_mb(b["bytes"]),
                f"{b['files']:.0f}",
            ]
        )
        if name == "runbus":
            goals.append(
                {
                    "goal": f"runbus bytes on disk after {bytes_steps:,} steps <= 7 MB",
                    "measured": b["bytes"],
                    "met": b["bytes"] <= BYTES_GOAL,
                }
            )
    headers = [
        "tracker",
        "peak RSS (self)",
        "peak RSS (children)",
        "RSS self+children after finish",
        "bytes on disk",
        "files",
    ]
    print(md_table(headers, rows))
    print()

    print("## Goals\n")
    rows = []
    for g in goals:
        m = g["measured"]
        shown = "n/a" if m is None else (fmt_mb(m) if "bytes" in g["goal"] else f"{m:.2f}x")
        rows.append([g["goal"], shown, verdict(g["met"])])
    print(md_table(["goal", "measured", "status"], rows))
    print()
    print("## Settings used\n")
    for name in active:
        print(f"- {name} ({availability_notes[name]}): {TRACKERS[name].settings}")
    print(
        "\nwhole run = init() -> finish() returned, import excluded (shown apart); "
        "children run in an empty temp dir (no git checkout); "
        "peak RSS (children) is RUSAGE_CHILDREN, i.e. the largest reaped child."
    )
    print(f"\n{len(runs)} child runs in {elapsed:.0f} s")

    if args.json:
        data: dict[str, Any] = {
            "benchmark": "peers",
            "machine": info,
            "args": vars(args),
            "availability": availability_notes,
            "settings": {n: TRACKERS[n].settings for n in active},
            "summary": {n: {str(s): v for s, v in per.items()} for n, per in summary.items()},
            "goals": goals,
            "runs": runs,
        }
        print(f"wrote {write_json('peers', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
