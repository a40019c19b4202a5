"""The runbus demo: a small training loop logged end to end, live in the web UI.

Starts ``runbus server`` in the background (data in ``./runs-server``), prints
a login link that opens the UI on the run, and opens the browser when there is
a display. Then trains a logistic-regression classifier on synthetic data with
plain-Python SGD in ``mode="online"``, logging train metrics every step,
validation metrics and a histogram of the weights every epoch against an
``epoch`` x-axis, a table and a line chart of the validation curve at the end,
and a best-accuracy summary, so the charts grow while you watch. Then it reads
the run back from disk and lists the runs the way ``runbus ls`` does. On a
terminal the server keeps running until Enter or Ctrl-C; otherwise (CI) it is
stopped and the demo exits.

    python examples/demo.py [--pace SECONDS] [--no-server]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import IO

import pipeline
from pipeline.cli import main as runbus_cli

SERVER_DATA = Path("runs-server")
KEY_FILE = SERVER_DATA / "demo-key.txt"


def make_data(n: int, rng: random.Random) -> list[tuple[list[float], int]]:
    true_w = [1.5, -2.0, 0.7, 0.0]
    data = []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in true_w]
        p = 1 / (1 + math.exp(-sum(w * v for w, v in zip(true_w, x, strict=True))))
        data.append((x, 1 if rng.random() < p else 0))
    return data


def evaluate(w: list[float], data: list[tuple[list[float], int]]) -> tuple[float, float]:
    loss = correct = 0.0
    for x, y in data:
        z = sum(a * b for a, b in zip(w, x, strict=True))
        p = min(max(1 / (1 + math.exp(-z)), 1e-12), 1 - 1e-12)
        loss -= y * math.log(p) + (1 - y) * math.log(1 - p)
        correct += (p > 0.5) == bool(y)
    return loss / len(data), correct / len(data)


class DemoServer:
    """``runbus server`` in a child process on a free port, with a key the demo keeps."""

    def __init__(self, data: Path = SERVER_DATA) -> None:
        self.data = data
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.key = ""

    def _runbus(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipeline.cli", "server", *args, "--data", str(self.data)]

    def _demo_key(self) -> str:
        """The admin key this demo created on its first run (kept in the data dir, mode 0600)."""
        if KEY_FILE.is_file():
            return KEY_FILE.read_text().strip()
        self.data.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            self._runbus("keys", "create", "--name", "demo", "--admin"),
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            raise RuntimeError(f"could not create a key: {made.stderr.strip()}")
        key = made.stdout.strip()
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key

    def start(self, timeout: float = 60.0) -> None:
        self.key = self._demo_key()
        self.proc = subprocess.Popen(
            self._runbus("--port", "0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        found: list[str] = []
        seen: list[str] = []

        def read(stdout: IO[str]) -> None:
            # Reads to the end, so the server never blocks on a full pipe.
            for line in stdout:
                seen.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m and not found:
                    found.append(m.group(1))

        assert self.proc.stdout is not None
        threading.Thread(target=read, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("runbus server did not start:\n" + "".join(seen))
            time.sleep(0.05)
        self.url = found[0]

    def login_url(self, fragment: str = "") -> str:
        # The browser keeps the #fragment through the login redirect, so the
        # link lands on the page it names.
        return f"{self.url}/login?token={self.key}{fragment}"

    def wait_for_run(self, project: str, run_id: str, timeout: float = 15.0) -> bool:
        """Wait until the run reached the server (the upload starts in the background)."""
        url = f"{self.url}/api/v1/projects/{project}/runs/{run_id}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.key}"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(req, timeout=5):
                    return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def has_display() -> bool:
    """Whether a browser window could be shown here."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train a small model, logged live to a runbus UI.")
    ap.add_argument(
        "--pace",
        type=float,
        default=None,
        help="seconds to wait per training step, so the charts grow visibly "
        "(default 0.02 on a terminal, 0 otherwise)",
    )
    ap.add_argument(
        "--no-server", action="store_true", help="log offline into ./runs only, no server or UI"
    )
    args = ap.parse_args(argv)
    interactive = sys.stdin.isatty()
    pace = args.pace if args.pace is not None else (0.02 if interactive else 0.0)
    server = None if args.no_server else DemoServer()
    if server is not None:
        server.start()
    try:
        code = train_and_report(server, pace)
        if server is not None and interactive:
            print(f"\nThe UI stays up at {server.url}; press Enter (or Ctrl-C) to stop the server.")
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input()
        return code
    finally:
        if server is not None:
            server.stop()


def train_and_report(server: DemoServer | None, pace: float) -> int:
    rng = random.Random(0)
    config = {"lr": 0.05, "epochs": 8, "batch_size": 16, "features": 4, "seed": 0}
    train, val = make_data(2048, rng), make_data(512, rng)
    with pipeline.init(
        project="demo",
        config=config,
        tags=["demo"],
        mode="offline" if server is None else "online",
        server=None if server is None else server.url,
        api_key=None if server is None else server.key,
        settings={"system_interval": 1.0},
    ) as run:
        if server is not None:
            server.wait_for_run("demo", run.id)
            link = server.login_url(f"#/p/demo/r/{run.id}/charts")
            print(f"runbus UI: {link}", flush=True)
            if has_display():
                webbrowser.open(link)
        run.define_metric("epoch")
        run.define_metric("val/*", step_metric="epoch")
        run.define_metric("val/acc", step_metric="epoch", summary="best,last", goal="maximize")
        run.define_metric("train/loss", summary="min,last")
        w = [0.0] * config["features"]
        epochs = pipeline.Table(columns=["epoch", "val_loss", "val_acc"])
        for epoch in range(config["epochs"]):
            rng.shuffle(train)
            for start in range(0, len(train), config["batch_size"]):
                batch = train[start : start + config["batch_size"]]
                grad = [0.0] * len(w)
                for x, y in batch:
                    p = 1 / (1 + math.exp(-sum(a * b for a, b in zip(w, x, strict=True))))
                    for i, v in enumerate(x):
                        grad[i] += (p - y) * v / len(batch)
                w = [a - config["lr"] * g for a, g in zip(w, grad, strict=True)]
                loss, acc = evaluate(w, batch)
                run.log({"train/loss": loss, "train/acc": acc, "lr": config["lr"]})
                if pace:
                    time.sleep(pace)
            val_loss, val_acc = evaluate(w, val)
            epochs.add_data(epoch, val_loss, val_acc)
            run.log(
                {
                    "val/loss": val_loss,
                    "val/acc": val_acc,
                    "epoch": epoch,
                    "weights": pipeline.Histogram(w, num_bins=8),
                }
            )
            print(f"epoch {epoch}: val/loss={val_loss:.4f} val/acc={val_acc:.3f}")
        run.log({"epochs": epochs, "val/curve": pipeline.plot.line(epochs, "epoch", "val_acc")})
        run.summary["final_weights"] = w
    data = pipeline.read_run(run.dir)
    print(
        f"\nread back: {len(data.history)} rows, state {data.state}, best val/acc "
        f"{data.summary['val/acc']['best']:.3f}\n"
    )
    return runbus_cli(["ls", str(run.dir.parent)])


if __name__ == "__main__":
    sys.exit(main())
