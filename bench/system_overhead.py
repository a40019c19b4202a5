"""What the system sampler costs: CPU time per sample, and as a share of one core.

Two measurements (a benchmark, not a test: it prints what it found):

* ``sampler``: ``SystemSampler.sample()`` called directly on this thread, timed
  with ``time.thread_time`` (CPU time of the calling thread: exactly what the
  worker thread spends on a sample), for this process alone, with the process
  tree, and with the process tree plus a fake two-GPU NVML (which shows the
  wrapper's own cost; a real driver adds its call times on top).
* ``run``: whole quiet runs in fresh child processes, sampler on (at a short
  interval, so there are many samples) against sampler off, measured with
  ``time.process_time`` (all threads) while the main thread sleeps. The
  difference divided by the samples taken is the full cost of one sample: the
  thread hop, the ``Stats`` event through the bus, and the disk sink's write.

Each cost per sample is then scaled to the default interval (10 s): the share
of one core = seconds per sample / interval x 100 %. The goal is under 1 %.

Run with the project venv::

    .venv/bin/python bench/system_overhead.py [--samples 200] [--seconds 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DEFAULT_INTERVAL = 10.0
GOAL_PERCENT = 1.0

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import pipeline

    runs, system = sys.argv[1], sys.argv[2] == "on"
    interval, seconds = float(sys.argv[3]), float(sys.argv[4])
    run = pipeline.init(project="bench", dir=runs, settings={
        "quiet": True, "console": "off", "git": False, "requirements": False,
        "metadata": False, "system": system, "system_interval": interval})
    time.sleep(1.0)  # start-up work (imports, NVML start) is not the steady cost
    t0, c0 = time.time(), time.process_time()
    time.sleep(seconds)
    c1, t1 = time.process_time(), time.time()
    run.finish()
    samples = [s for s in pipeline.read_run(run.dir).system if t0 <= s["_timestamp"] < t1]
    print(json.dumps({"cpu_s": c1 - c0, "wall_s": t1 - t0, "samples": len(samples)}))
    """
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=("sampler", "run"), default=["sampler", "run"])
    ap.add_argument("--samples", type=int, default=200, help="direct samples per configuration")
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between direct samples")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per child run")
    ap.add_argument("--interval", type=float, default=0.1, help="sampler interval in child runs")
    ap.add_argument("--repeat", type=int, default=3, help="child run pairs (median)")
    ap.add_argument("--real-nvml", action="store_true", help="also time the real NVML (a GPU)")
    ap.add_argument(
        "--show",
        action="store_true",
        help="first print the metadata and one sample taken with the real NVML (if any)",
    )
    return ap.parse_args(argv)


def _share(seconds_per_sample: float, interval: float = DEFAULT_INTERVAL) -> float:
    """Percent of one core at one sample per ``interval`` seconds."""
    return 100.0 * seconds_per_sample / interval


def show(interval: float = 1.0) -> None:
    """Print the metadata and one sample, as a run would record them (real psutil and NVML)."""
    sys.path.insert(0, str(SRC))
    from sources.system import SystemSampler

    with tempfile.TemporaryDirectory() as tmp:
        sampler = SystemSampler(Path(tmp), process_tree=True, gpu=True)
        meta = sampler.start()
        time.sleep(interval)
        _, values = sampler.sample()
        sampler.close()
    print("metadata:", json.dumps(meta, indent=2))
    print(f"disk followed: {sampler.disk or 'all disks'}")
    print("sample:", json.dumps(values, indent=2), "\n")


def bench_sampler(samples: int, gap: float, real_nvml: bool) -> list[dict[str, Any]]:
    """Time ``sample()`` directly, per configuration."""
    sys.path.insert(0, str(SRC))
    from sources.nvml import FakeGpu, FakeNvml
    from sources.system import SystemSampler

    configs: list[tuple[str, dict[str, Any]]] = [
        ("process only, no GPU", {"process_tree": False, "gpu": False}),
        ("process tree, no GPU", {"process_tree": True, "gpu": False}),
        (
            "process tree, fake NVML, 2 GPUs",
            {"process_tree": True, "nvml": FakeNvml([FakeGpu(), FakeGpu()])},
        ),
    ]
    if real_nvml:
        configs.append(("process tree, real NVML", {"process_tree": True, "gpu": True}))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in configs:
            sampler = SystemSampler(Path(tmp), **kwargs)
            meta = sampler.start()
            costs = []
            keys = 0
            for _ in range(samples):
                time.sleep(gap)
                c0 = time.thread_time()
                _, values = sampler.sample()
                costs.append(time.thread_time() - c0)
                keys = len(values)
            sampler.close()
            mean = statistics.fmean(costs)
            out.append(
                {
                    "config": name,
                    "metrics": keys,
                    "gpus": len(meta.get("gpu", [])),
                    "median_us": statistics.median(costs) * 1e6,
                    "mean_us": mean * 1e6,
                    "max_us": max(costs) * 1e6,
                    "percent_of_core_at_10s": _share(mean),
                }
            )
    return out


def _child(runs: Path, system: bool, interval: float, seconds: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(runs),
            "on" if system else "off",
            str(interval),
            str(seconds),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_run(seconds: float, interval: float, repeat: int) -> dict[str, Any]:
    """Whole quiet runs, sampler on against off; the cost of one sample end to end."""
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            off = _child(Path(tmp) / f"off{i}", False, interval, seconds)
            on = _child(Path(tmp) / f"on{i}", True, interval, seconds)
            extra = on["cpu_s"] - off["cpu_s"]
            per_sample = extra / on["samples"] if on["samples"] else float("nan")
            pairs.append({"off": off, "on": on, "per_sample_s": per_sample})
    per_sample = statistics.median(float(p["per_sample_s"]) for p in pairs)
    return {
        "interval": interval,
        "seconds": seconds,
        "pairs": pairs,
        "per_sample_us": per_sample * 1e6,
        "percent_of_core_at_10s": _share(per_sample),
        "percent_of_core_at_interval": _share(per_sample, interval),
    }


def _machine() -> dict[str, Any]:
    import psutil

    from _workload import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": psutil.cpu_count(),
        "processes": len(psutil.pids()),
        "python": platform.python_version(),
        "psutil": psutil.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run the selected measurements and print a report."""
    args = _parse(argv)
    machine = _machine()
    print(
        f"machine: {machine['cpu'] or platform.machine()}, {machine['cores']} cores, "
        f"{machine['processes']} processes, Python {machine['python']}, "
        f"psutil {machine['psutil']}, {machine['platform']}\n"
    )
    if args.show:
        show()
    if "sampler" in args.only:
        rows = bench_sampler(args.samples, args.gap, args.real_nvml)
        print(f"sample() CPU time on its thread ({args.samples} samples each):\n")
        print("| configuration | metrics | median µs | mean µs | max µs | % of one core at 10 s |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['config']} | {r['metrics']} | {r['median_us']:.0f} | {r['mean_us']:.0f} "
                f"| {r['max_us']:.0f} | {r['percent_of_core_at_10s']:.4f} % |"
            )
        print()
    if "run" in args.only:
        res = bench_run(args.seconds, args.interval, args.repeat)
        print(
            f"whole runs, {args.seconds:g} s measured, sampler every {args.interval:g} s "
            f"against off ({args.repeat} pairs):\n"
        )
        print("| pair | CPU s off | CPU s on | samples | µs per sample |")
        print("|---|---:|---:|---:|---:|")
        for i, p in enumerate(res["pairs"]):
            print(
                f"| {i + 1} | {p['off']['cpu_s']:.3f} | {p['on']['cpu_s']:.3f} "
                f"| {p['on']['samples']} | {p['per_sample_s'] * 1e6:.0f} |"
            )
        share = res["percent_of_core_at_10s"]
        verdict = "meets" if share < GOAL_PERCENT else "MISSES"
        print(
            f"\nmedian {res['per_sample_us']:.0f} µs per sample end to end: "
            f"{res['percent_of_core_at_interval']:.2f} % of one core at {args.interval:g} s, "
            f"{share:.4f} % at the default 10 s ({verdict} the {GOAL_PERCENT:g} % goal)"
        )


if __name__ == "__main__":
    main()
