"""Log runs to a runbus server through the real client, for the browser tests and screenshots.

    RUNBUS_SERVER=URL RUNBUS_API_KEY=KEY python seed_runs.py --dir RUNS --out manifest.json
    RUNBUS_SERVER=URL RUNBUS_API_KEY=KEY python seed_runs.py --dir RUNS --live --project live
    RUNBUS_SERVER=URL RUNBUS_API_KEY=KEY python seed_runs.py --dir RUNS --git --project git

The first form logs five finished runs into ``--project`` (one failed) and
writes a manifest of what was logged, which the tests compare the UI against.
The second logs one run that stays running, a step every ``--interval``
seconds, until its standard input closes, then finishes it. The third, run
inside a git repository, logs one short run with git probing on and prints
its id once it has finished.

A script, not a fixture, so console capture sees a real process's stdout and
stderr, exactly as in a training script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pipeline
from pipeline import plot

#: Settings of every seeded run: uploads trail the disk by ~0.2 s, no git or
#: requirements probing of whatever directory the script runs in.
SETTINGS: dict[str, Any] = {
    "quiet": True,
    "flush_interval": 0.2,
    "git": False,
    "requirements": False,
    "system_interval": 0.2,
}

#: The main run: steps logged and where an epoch (a val row) ends.
MAIN_STEPS = 3000
EPOCH_STEPS = 300
#: Image widths by step (the image is square): the step slider shows which is which.
IMAGE_STEPS = {0: 16, 1000: 24, 2000: 32}
TABLE_ROWS = 12
#: System samples the main run waits for, so its System tab has lines to draw.
SYSTEM_SAMPLES = 3
#: Where a GIF video, an MP4 video and a WAV clip are logged.
VIDEO_STEP = 1500
SHORT_STEPS = 100

#: name -> (config, tags, exit code). lr values are distinct, so sorting by it has one answer.
RUNS: dict[str, tuple[dict[str, Any], list[str], int]] = {
    "baseline": ({"lr": 0.01, "batch": 64, "optimizer": "adam"}, ["baseline", "resnet"], 0),
    "wide": ({"lr": 0.03, "batch": 128, "optimizer": "adam"}, ["wide"], 0),
    "tiny-lr": ({"lr": 0.001, "batch": 32, "optimizer": "adam"}, ["resnet"], 0),
    "hot": ({"lr": 0.1, "batch": 64, "optimizer": "sgd"}, ["unstable"], 1),
    "sgd": ({"lr": 0.003, "batch": 256, "optimizer": "sgd"}, ["resnet"], 0),
}


def loss_at(step: int, lr: float, rng: random.Random) -> float:
    """A plausible training loss: decays faster with a larger lr, plus noise."""
    return 0.1 + 2.0 * math.exp(-step * lr / 3.0) + rng.gauss(0.0, 0.03)


def checkerboard(width: int) -> Any:
    """A width x width RGB test image."""
    import numpy as np

    y, x = np.mgrid[0:width, 0:width]
    board = ((x // 4 + y // 4) % 2).astype(np.uint8) * 200
    return np.stack([board, np.full_like(board, width * 4), 255 - board], axis=-1)


def wait_until(
    run: pipeline.Run, done: Callable[[Any], bool], what: str, timeout: float = 60.0
) -> None:
    """Keep the run open until ``done(read_run(run.dir))`` holds (a short run may end first)."""
    deadline = time.monotonic() + timeout
    while not done(pipeline.read_run(run.dir)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout:.0f} s for {what}")
        time.sleep(SETTINGS["system_interval"] / 2)
        run.flush()


def wait_for_system_samples(run: pipeline.Run, n: int) -> None:
    """Keep the run open until the sampler has taken ``n`` samples."""
    wait_until(run, lambda data: len(data.system) >= n, f"{n} system samples")


def log_main(run: pipeline.Run, lr: float, rng: random.Random) -> dict[str, Any]:
    """The run every feature shows up on; returns what the manifest records of it."""
    import numpy as np

    run.define_metric("val/*", step_metric="epoch")
    stdout: list[str] = []
    stderr: list[str] = []
    last: dict[str, Any] = {}
    for step in range(MAIN_STEPS):
        loss = loss_at(step, lr, rng)
        row: dict[str, Any] = {
            "train/loss": loss,
            "train/acc": 1.0 - loss / 2.5,
            "train/lr": lr * (1 - step / MAIN_STEPS),
        }
        if step == VIDEO_STEP:
            frames = np.stack([np.roll(checkerboard(32), 4 * t, axis=1) for t in range(8)])
            row["rollout"] = pipeline.Video(frames, fps=4)
            row["rollout_mp4"] = pipeline.Video(frames, fps=4, format="mp4")
            tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
            row["speech"] = pipeline.Audio(tone * 0.5, sample_rate=8000)
        if step in IMAGE_STEPS:
            row["examples"] = pipeline.Image(
                checkerboard(IMAGE_STEPS[step]), caption=f"step {step}"
            )
        if step % EPOCH_STEPS == EPOCH_STEPS - 1:
            epoch = step // EPOCH_STEPS
            row |= {"epoch": epoch, "val/loss": loss * 1.1, "val/acc": 0.5 + epoch / 25}
            row["weights"] = pipeline.Histogram(np.random.default_rng(epoch).normal(0, 1, 500))
            line = f"epoch {epoch}: train/loss {loss:.4f}"
            print(line, flush=True)
            stdout.append(line)
            if epoch % 3 == 0:
                warning = f"warning: epoch {epoch} gradient norm clipped"
                print(warning, file=sys.stderr, flush=True)
                stderr.append(warning)
        run.log(row)
        last.update({k: v for k, v in row.items() if isinstance(v, int | float)})
    table = pipeline.Table(columns=["epoch", "loss", "split"])
    losses = [round(2.0 / (1 + i), 4) for i in range(TABLE_ROWS)]
    for i, loss in enumerate(losses):
        table.add_data(i, loss, "train" if i % 2 else "val")
    run.log({"predictions": table, "loss_chart": plot.line(table, "epoch", "loss", title="Loss")})
    wait_for_system_samples(run, SYSTEM_SAMPLES)
    return {
        "steps": MAIN_STEPS,
        "epochs": MAIN_STEPS // EPOCH_STEPS,
        "image_key": "examples",
        "image_widths": {str(k): v for k, v in IMAGE_STEPS.items()},
        "table_key": "predictions",
        "table_losses": losses,
        "plot_key": "loss_chart",
        "histogram_key": "weights",
        "video_keys": {"rollout": "gif", "rollout_mp4": "mp4"},
        "audio_key": "speech",
        "cwd": os.getcwd(),
        "stdout": stdout,
        "stderr": stderr,
        "last": last,
    }


def seed(args: argparse.Namespace) -> None:
    manifest: dict[str, Any] = {"project": args.project, "runs": {}}
    for name, (config, tags, exit_code) in RUNS.items():
        rng = random.Random(name)
        run = pipeline.init(
            project=args.project,
            name=name,
            config=config,
            tags=tags,
            dir=args.dir,
            mode="online",
            settings={**SETTINGS, "system": name == "baseline"},
        )
        entry: dict[str, Any] = {"id": run.id, "config": config, "tags": tags}
        if name == "baseline":
            entry |= log_main(run, config["lr"], rng)
            manifest["main"] = name
        else:
            last: dict[str, float] = {}
            for step in range(SHORT_STEPS):
                loss = loss_at(step * 30, config["lr"], rng)
                last = {"train/loss": loss, "train/acc": 1.0 - loss / 2.5}
                run.log(last)
            entry |= {"steps": SHORT_STEPS, "last": last}
        run.finish(exit_code=exit_code)
        entry["state"] = "finished" if exit_code == 0 else "failed"
        if name == "baseline":
            samples = pipeline.read_run(run.dir).system
            entry["memory_samples"] = sum("system/memory/percent" in x for x in samples)
        manifest["runs"][name] = entry
    Path(args.out).write_text(json.dumps(manifest, indent=1))


def live(args: argparse.Namespace) -> None:
    """One running run, a step per ``--interval`` s, until stdin closes."""
    import threading

    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    run = pipeline.init(
        project=args.project,
        name="live",
        config={"lr": 0.01},
        dir=args.dir,
        mode="online",
        settings={**SETTINGS, "system": False, "console": "off"},
    )
    # The caller reads the run id from the first line of stdout.
    print(run.id, flush=True)
    rng = random.Random(0)
    keys = args.keys.split(",")
    start = time.monotonic()
    step = 0
    # Paced by the clock, not by sleeping a fixed interval, so the rate holds on a busy machine.
    while not stop.wait(max(0.0, start + step * args.interval - time.monotonic())):
        run.log({k: loss_at(step, 0.01, rng) * (i + 1) for i, k in enumerate(keys)})
        step += 1
    elapsed = time.monotonic() - start
    run.finish()
    print(f"logged {step} steps in {elapsed:.1f} s", flush=True)


def git_run(args: argparse.Namespace) -> None:
    """One short run that records the git state of the working directory, which is dirty."""
    run = pipeline.init(
        project=args.project,
        name="git",
        dir=args.dir,
        mode="online",
        settings={**SETTINGS, "git": True, "system": False, "console": "off"},
    )
    for step in range(10):
        run.log({"train/loss": loss_at(step, 0.01, random.Random(step))})
    # The probe sends git state after init() returns; finish would cut it off if still going.
    wait_until(
        run,
        lambda data: "git" in data.metadata and "diff.patch" in data.files,
        "git metadata and diff.patch (is the working directory a dirty git repository?)",
    )
    run.finish()
    print(run.id, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--dir", required=True, help="runs directory of the client")
    ap.add_argument("--project", default="ui")
    ap.add_argument("--out", help="manifest path (seed mode)")
    ap.add_argument("--live", action="store_true", help="log one run until stdin closes")
    ap.add_argument("--git", action="store_true", help="log one run with git probing on")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between live steps")
    ap.add_argument("--keys", default="train/loss", help="comma list of live metric names")
    args = ap.parse_args()
    if args.live:
        live(args)
    elif args.git:
        git_run(args)
    elif args.out:
        seed(args)
    else:
        ap.error("give --out (seed finished runs), --live or --git")


if __name__ == "__main__":
    main()
