"""runbus alone: the cost of ``run.log()`` on the calling thread, and what a run costs.

Each figure comes from fresh child processes (see _workload.py); timings are
repeated and the median (import: the best) is reported:

* ``import pipeline`` (best of 5) and the modules that take the most import time;
* ``run.log()`` per call, timed with ``perf_counter_ns`` around each call over
  100,000 steps: p50, p90, p99, p99.9, max (median over the repeats);
* ``init()`` and ``finish()`` (after the last log) durations;
* whole runs (init -> finish returned) of 20,000 and 100,000 steps, against the
  bare loop that writes the same rows with orjson (the limit);
* peak RSS of a 1,000,000-step run, and bytes on disk after 20,000 steps.

Run with the project venv::

    .venv/bin/python bench/hotpath.py [--json] [--only import latency whole rss] [--profile]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from _workload import (
    LATENCY_QS,
    Result,
    availability,
    fmt_mb,
    fmt_ms,
    fmt_rss,
    fmt_s,
    import_profile,
    machine_info,
    md_table,
    median,
    spawn,
    verdict,
    write_json,
)

SECTIONS = ("import", "latency", "whole", "rss")
GOAL_P50_NS = 3_000
GOAL_P99_NS = 30_000
GOAL_IMPORT_S = 0.150
GOAL_INIT_S = 0.050
GOAL_FINISH_S = 0.100
GOAL_RSS_BYTES = 45_000_000
GOAL_DISK_BYTES = 7_000_000
GOAL_BARE_RATIO = 3.0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--latency-steps", type=int, default=100_000)
    ap.add_argument("--whole-steps", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--rss-steps", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="repeats of each timing")
    ap.add_argument("--import-repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child run")
    ap.add_argument(
        "--profile", action="store_true", help="also cProfile the calling thread over a run"
    )
    ap.add_argument("--json", action="store_true", help="write results to bench/out/")
    return ap.parse_args(argv)


class Report:
    """Collects goal rows and raw results."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.data: dict[str, Any] = {}

    def goal(self, what: str, shown: str, goal: str, ok: bool | None) -> None:
        self.rows.append([what, shown, goal, verdict(ok)])


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fail(r: Result) -> str:
    return f"{r['error']}: " + " / ".join(r.get("output", []))[-400:]


def _import(args: argparse.Namespace, env: dict[str, str], rep: Report) -> None:
    runs = [
        spawn({"kind": "import", "tracker": "runbus"}, extra_env=env, timeout=args.timeout)
        for _ in range(args.import_repeat)
    ]
    ok = [r["import_s"] for r in runs if "error" not in r]
    if not ok:
        rep.goal("import pipeline", "error: " + _fail(runs[0]), "<= 150 ms", None)
        return
    best = min(ok)
    rep.goal(
        f"import pipeline (best of {len(ok)})", fmt_ms(best), "<= 150 ms", best <= GOAL_IMPORT_S
    )
    top = import_profile("pipeline", env)
    rep.data["import"] = {"all_s": ok, "best_s": best, "importtime_top": top}
    print("## Largest self times in `python -X importtime -c 'import pipeline'`\n")
    for line in top:
        print(f"- {line}")
    print()


def _latency(args: argparse.Namespace, env: dict[str, str], rep: Report) -> None:
    runs: list[Result] = []
    for i in range(args.repeat):
        task = {"kind": "latency", "tracker": "runbus", "steps": args.latency_steps, "seed": i}
        r = spawn(task, extra_env=env, timeout=args.timeout)
        _progress(f"latency run {i + 1}/{args.repeat}: {'ok' if 'error' not in r else _fail(r)}")
        runs.append(r)
    ok = [r for r in runs if "error" not in r]
    rep.data["latency"] = runs
    if not ok:
        rep.goal("run.log() latency", "error: " + _fail(runs[0]), "", None)
        return
    keys = [f"p{q:g}" for q in LATENCY_QS] + ["max"]
    med = {k: median([r["latency_ns"][k] for r in ok]) for k in keys}
    floor = median([r["timer_floor_ns"] for r in ok])
    n = args.latency_steps
    print(f"## run.log() on the calling thread, {n:,} steps (median of {len(ok)} runs)\n")
    rows = [
        [k, f"{med[k] / 1000:.2f} µs", " / ".join(f"{r['latency_ns'][k] / 1000:.2f}" for r in ok)]
        for k in keys
    ]
    rows.append(["mean", f"{median([r['latency_mean_ns'] for r in ok]) / 1000:.2f} µs", ""])
    print(md_table(["percentile", "median", "each run (µs)"], rows))
    print(f"\ntimer floor (perf_counter_ns pair around a no-op call): {floor:.0f} ns, included\n")
    rep.goal(
        f"run.log() p50 ({n:,} steps)",
        f"{med['p50'] / 1000:.2f} µs",
        "<= 3 µs",
        med["p50"] <= GOAL_P50_NS,
    )
    rep.goal("run.log() p90", f"{med['p90'] / 1000:.2f} µs", "(report)", None)
    rep.goal(
        f"run.log() p99 ({n:,} steps)",
        f"{med['p99'] / 1000:.2f} µs",
        "<= 30 µs",
        med["p99"] <= GOAL_P99_NS,
    )
    rep.goal("run.log() p99.9", f"{med['p99.9'] / 1000:.2f} µs", "(report)", None)
    fin = median([r["finish_s"] for r in ok])
    rep.goal(f"finish() after {n:,} timed logs", fmt_ms(fin), "<= 100 ms", fin <= GOAL_FINISH_S)


def _whole(args: argparse.Namespace, env: dict[str, str], rep: Report) -> None:
    runs: list[Result] = []
    for i in range(args.repeat):
        for steps in args.whole_steps:
            for tracker in ("runbus", "bare"):
                task = {"kind": "whole", "tracker": tracker, "steps": steps, "seed": i}
                r = spawn(task, extra_env=env if tracker == "runbus" else {}, timeout=args.timeout)
                r.update(repeat=i, steps=steps)
                runs.append(r)
                shown = fmt_s(r["total_s"]) if "error" not in r else _fail(r)
                _progress(f"whole {tracker} {steps} steps, run {i + 1}: {shown}")
    rep.data["whole"] = runs
    print(f"## Whole runs, init -> finish returned (median of {args.repeat})\n")
    rows: list[list[str]] = []
    for steps in args.whole_steps:
        got: dict[str, list[Result]] = {
            t: [r for r in runs if r["tracker"] == t and r["steps"] == steps and "error" not in r]
            for t in ("runbus", "bare")
        }
        for t in ("runbus", "bare"):
            if not got[t]:
                rows.append([f"{steps:,}", t, *(["error"] * 5)])
                continue
            total = median([r["total_s"] for r in got[t]])
            rows.append(
                [
                    f"{steps:,}",
                    t,
                    fmt_ms(median([r["init_s"] for r in got[t]])),
                    fmt_s(median([r["loop_s"] for r in got[t]])),
                    fmt_ms(median([r["finish_s"] for r in got[t]])),
                    fmt_s(total),
                    f"{steps / total:,.0f}",
                ]
            )
        if not got["runbus"] or not got["bare"]:
            continue
        bare = {r["repeat"]: r["total_s"] for r in got["bare"]}
        ratio = median(
            [r["total_s"] / bare[r["repeat"]] for r in got["runbus"] if r["repeat"] in bare]
        )
        rep.goal(
            f"whole run vs bare orjson loop, {steps:,} steps",
            f"{ratio:.2f}x",
            "<= 3x",
            ratio <= GOAL_BARE_RATIO,
        )
        sps = steps / median([r["total_s"] for r in got["runbus"]])
        rep.goal(f"whole run, {steps:,} steps", f"{sps:,.0f} steps/s", "(report)", None)
        init = median([r["init_s"] for r in got["runbus"]])
        fin = median([r["finish_s"] for r in got["runbus"]])
        rep.goal(f"init() ({steps:,}-step runs)", fmt_ms(init), "<= 50 ms", init <= GOAL_INIT_S)
        rep.goal(f"finish() after {steps:,} steps", fmt_ms(fin), "<= 100 ms", fin <= GOAL_FINISH_S)
        if steps == 20_000:
            size = median([r["bytes"] for r in got["runbus"]])
            bare_size = median([r["bytes"] for r in got["bare"]])
            rep.goal(
                "bytes on disk after 20,000 steps", fmt_mb(size), "<= 7 MB", size <= GOAL_DISK_BYTES
            )
            rep.goal("  (bare loop's JSON lines, for scale)", fmt_mb(bare_size), "", None)
            files = got["runbus"][0].get("largest_files", [])
            rep.data["runbus_largest_files_20k"] = files
    headers = ["steps", "writer", "init", "log loop", "finish", "init->finish", "steps/s"]
    print(md_table(headers, rows))
    print()


def _rss(args: argparse.Namespace, env: dict[str, str], rep: Report) -> None:
    n = args.rss_steps
    r = spawn(
        {"kind": "whole", "tracker": "runbus", "steps": n}, extra_env=env, timeout=args.timeout
    )
    b = spawn({"kind": "whole", "tracker": "bare", "steps": n}, timeout=args.timeout)
    rep.data["rss"] = {"runbus": r, "bare": b}
    if "error" in r:
        rep.goal(f"peak RSS, {n:,} steps", "error: " + _fail(r), "<= 45 MB", None)
        return
    peak = r["rss_self_kib"] * 1024
    rep.goal(
        f"peak RSS, {n:,} steps (self)",
        fmt_rss(r["rss_self_kib"]),
        "<= 45 MB",
        peak <= GOAL_RSS_BYTES,
    )
    if r["rss_children_kib"]:
        rep.goal("  peak RSS of reaped children", fmt_rss(r["rss_children_kib"]), "", None)
    rep.goal("  RSS after import pipeline", fmt_rss(r["rss_after_import_kib"]), "", None)
    if "error" not in b:
        rep.goal("  bare loop peak RSS, same steps", fmt_rss(b["rss_self_kib"]), "", None)
    sps = n / r["total_s"]
    rep.goal(f"  whole run, {n:,} steps", f"{fmt_s(r['total_s'])} ({sps:,.0f} steps/s)", "", None)


def _profile(args: argparse.Namespace, env: dict[str, str], rep: Report) -> None:
    task = {"kind": "profile", "tracker": "runbus", "steps": args.latency_steps}
    r = spawn(task, extra_env=env, timeout=args.timeout)
    rep.data["profile"] = r
    print(f"## cProfile of the calling thread, {args.latency_steps:,} steps (log loop only)\n")
    print("```")
    print(r.get("profile", _fail(r) if "error" in r else "").strip())
    print("```\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    info = machine_info()
    print(f"# runbus hot path benchmark ({info['date']})\n")
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"loadavg {info['loadavg'][0]:.2f}; runbus at {info['runbus']}\n"
    )
    ok, note, env = availability("runbus")
    if not ok:
        print(f"skipped: {note}")
        return 1
    print(f"runbus: {note}\n")
    sys.stdout.flush()
    rep = Report()
    steps: dict[str, Any] = {
        "import": _import,
        "latency": _latency,
        "whole": _whole,
        "rss": _rss,
    }
    for name in SECTIONS:
        if name in args.only:
            steps[name](args, env, rep)
            sys.stdout.flush()
    if args.profile:
        _profile(args, env, rep)
    print("## Results against the goals\n")
    print(md_table(["figure", "measured", "goal", "status"], rep.rows))
    if args.json:
        rep.data.update(benchmark="hotpath", machine=info, args=vars(args), goals=rep.rows)
        print(f"\nwrote {write_json('hotpath', rep.data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
