"""What ``run.watch()`` adds to a training step (a benchmark, not a test).

A 10-layer MLP (``--width`` units, ReLU) trains with SGD on a fixed batch; every
step ends with ``run.log({"loss": ...})``. In one process and one run, blocks of
``--steps`` steps alternate between unwatched and watched
(``run.watch(model, log=..., log_freq=...)`` / ``run.unwatch()``), so both see
the same machine state; each block's steps/s is measured with
``time.perf_counter``. Reported: the median steps/s of each, and the overhead as
the median over repeats of (unwatched / watched - 1). The goal is <= 10 % at
``log_freq=100``. Also shown: the time of one histogram pass over every
parameter (what a logging step pays on top).

Run with the project venv (torch installed)::

    PYTHONPATH=src .venv/bin/python bench/watch.py [--log all] [--log-freq 100] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

GOAL = 0.10


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--log", default="all", choices=("gradients", "parameters", "all"))
    ap.add_argument("--log-freq", type=int, default=100)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200, help="steps per timed block")
    ap.add_argument("--repeat", type=int, default=15, help="pairs of blocks")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    return ap.parse_args(argv)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        import torch
        from torch import nn

        import pipeline
        from pipeline.watch import histogram
    except ImportError as exc:
        print(f"skipped: {exc}")
        return 1

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(args.layers):
        layers.append(nn.Linear(args.width, args.width if i < args.layers - 1 else 1))
        if i < args.layers - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, args.width, device=device)
    y = torch.randn(args.batch, 1, device=device)
    n_params = sum(p.numel() for p in model.parameters())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def block(run: Any) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            # .item() syncs each step, as a real loop that logs its loss does.
            run.log({"loss": loss.item()})
        sync()
        return args.steps / (time.perf_counter() - t0)

    print(f"# run.watch overhead ({platform.python_version()}, torch {torch.__version__})")
    print(
        f"model: {args.layers}-layer MLP, width {args.width}, {n_params:,} parameters in "
        f"{len(list(model.parameters()))} tensors; batch {args.batch}; device {device}; "
        f"torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"watch: log={args.log!r}, log_freq={args.log_freq}; {args.steps} steps per block")

    with tempfile.TemporaryDirectory() as tmp:
        from pipeline.testing import QUIET_SETTINGS

        run = pipeline.init(project="bench", dir=tmp, settings=QUIET_SETTINGS)
        block(run)  # warm-up: allocator, kernels, the pipeline thread
        plain: list[float] = []
        watched: list[float] = []
        for i in range(args.repeat):
            # Alternate which goes first so a drift in machine state hits both.
            for on in (False, True) if i % 2 == 0 else (True, False):
                if on:
                    run.watch(model, log=args.log, log_freq=args.log_freq)
                    watched.append(block(run))
                    run.unwatch()
                else:
                    plain.append(block(run))
        run.finish()

    ratios = [p / w - 1 for p, w in zip(plain, watched, strict=True)]
    overhead = statistics.median(ratios)

    # One logging pass on its own: a histogram of every gradient and parameter.
    model(x).sum().backward()
    tensors = [t for p in model.parameters() for t in (p, p.grad) if t is not None]
    times = []
    for _ in range(20):
        sync()
        t0 = time.perf_counter()
        for t in tensors:
            histogram(t)
        times.append(time.perf_counter() - t0)

    print()
    print("| | steps/s (median) | all repeats |")
    print("|---|---|---|")
    print(
        f"| unwatched | {statistics.median(plain):,.0f} | {', '.join(f'{v:,.0f}' for v in plain)} |"
    )
    print(
        f"| watched | {statistics.median(watched):,.0f} | "
        f"{', '.join(f'{v:,.0f}' for v in watched)} |"
    )
    print()
    print(
        f"overhead: {overhead * 100:+.1f} % (median of per-repeat ratios; "
        f"range {min(ratios) * 100:+.1f} .. {max(ratios) * 100:+.1f} %); "
        f"goal <= {GOAL * 100:.0f} %: {'met' if overhead <= GOAL else 'NOT met'}"
    )
    print(
        f"one logging pass ({len(tensors)} histograms): "
        f"{statistics.median(times) * 1e3:.2f} ms median"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
