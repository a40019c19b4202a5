"""The runbus demo: a small training loop logged end to end.

Trains a logistic-regression classifier on synthetic data with plain-Python
SGD, logging train metrics every step, validation metrics and a histogram of
the weights every epoch against an ``epoch`` x-axis, a table and a line chart
of the validation curve at the end, and a best-accuracy summary. Then it
reads the run back from disk and lists the runs the way ``runbus ls`` does.
"""

from __future__ import annotations

import math
import random
import sys

import pipeline
from pipeline.cli import main as runbus_cli


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


def main() -> int:
    rng = random.Random(0)
    config = {"lr": 0.05, "epochs": 8, "batch_size": 16, "features": 4, "seed": 0}
    train, val = make_data(2048, rng), make_data(512, rng)
    with pipeline.init(project="demo", config=config, tags=["demo"]) as run:
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
