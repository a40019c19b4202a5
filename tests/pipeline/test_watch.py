"""``run.watch()``: gradient and parameter histograms through real runs."""

from __future__ import annotations

import gc
import math
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip(
    "torch", reason="run.watch() needs PyTorch: pip install 'runbus[torch]' (torch==2.13.0)"
)
from torch import nn  # noqa: E402

import pipeline  # noqa: E402
from pipeline.media.histogram import Histogram  # noqa: E402
from pipeline.testing import QUIET_SETTINGS  # noqa: E402
from pipeline.watch import BINS, bin_tensor, histogram  # noqa: E402

SETTINGS = QUIET_SETTINGS


def _init(tmp_path: Path, **settings: Any) -> pipeline.Run:
    return pipeline.init(project="p", dir=tmp_path, settings={**SETTINGS, **settings})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _train(run: pipeline.Run, model: nn.Module, steps: int, x: Any = None) -> list[dict[str, Any]]:
    """``steps`` steps of SGD, one ``run.log`` each; returns grads/params as of each backward."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if x is None:
        x = torch.randn(16, 4)
    seen = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        seen.append(
            {
                name: (p.grad.detach().clone(), p.detach().clone())
                for name, p in model.named_parameters()
            }
        )
        opt.step()
        run.log({"loss": loss.item()})
    return seen


def _hist_keys(row: dict[str, Any]) -> set[str]:
    return {k for k in row if k.startswith(("gradients/", "parameters/"))}


def _assert_matches(hist: dict[str, Any], values: Any) -> None:
    """``hist`` is numpy's 64-bin histogram of ``values``' finite elements."""
    np = pytest.importorskip("numpy")
    flat = values.detach().reshape(-1).double().numpy()
    finite = flat[np.isfinite(flat)]
    counts, edges = np.histogram(finite, bins=BINS)
    assert hist["_type"] == "histogram"
    assert len(hist["counts"]) == BINS
    assert len(hist["bins"]) == BINS + 1
    assert sum(hist["counts"]) == finite.size
    assert hist["dropped"] == flat.size - finite.size
    assert hist["bins"] == pytest.approx(list(edges), abs=1e-6)
    # A value that lands on a bin edge may round into the neighbouring bin.
    assert sum(abs(a - b) for a, b in zip(hist["counts"], counts, strict=True)) <= 2


def test_histograms_ride_with_the_next_log_every_log_freq_passes(tmp_path: Path) -> None:
    model = _model()
    run = _init(tmp_path)
    run.watch(model, log="all", log_freq=2)
    seen = _train(run, model, 6)
    run.finish()
    history = pipeline.read_run(run.dir).history

    names = [name for name, _ in model.named_parameters()]
    expected = {f"gradients/{n}" for n in names} | {f"parameters/{n}" for n in names}
    assert [row["_step"] for row in history] == list(range(6))
    for row in history:
        # The 2nd, 4th and 6th backward passes, each riding with the log() after it.
        assert _hist_keys(row) == (expected if row["_step"] % 2 == 1 else set())
        assert "loss" in row
    for row in history[1::2]:
        for name in names:
            grad, param = seen[row["_step"]][name]
            _assert_matches(row[f"gradients/{name}"], grad)
            _assert_matches(row[f"parameters/{name}"], param)


@pytest.mark.parametrize(
    ("log", "prefix"), [("gradients", "gradients/"), ("parameters", "parameters/")]
)
def test_log_picks_gradients_or_parameters(tmp_path: Path, log: str, prefix: str) -> None:
    model = _model()
    run = _init(tmp_path)
    run.watch(model, log=log, log_freq=1)
    _train(run, model, 2)
    run.finish()
    for row in pipeline.read_run(run.dir).history:
        keys = _hist_keys(row)
        assert len(keys) == 4
        assert all(k.startswith(prefix) for k in keys)


def test_default_is_gradients_every_100_passes(tmp_path: Path) -> None:
    model = _model()
    run = _init(tmp_path)
    run.watch(model)
    _train(run, model, 201)
    run.finish()
    with_hist = [r["_step"] for r in pipeline.read_run(run.dir).history if _hist_keys(r)]
    assert with_hist == [99, 199]


def test_unwatch_stops_histograms_and_removes_hooks(tmp_path: Path) -> None:
    model = _model()
    run = _init(tmp_path)
    run.watch(model, log="gradients", log_freq=1)
    _train(run, model, 2)
    run.unwatch(model)
    assert all(not p._backward_hooks for p in model.parameters())
    _train(run, model, 2)
    run.watch(model, log="gradients", log_freq=1)
    _train(run, model, 1)
    run.unwatch()
    _train(run, model, 1)
    run.finish()
    marked = [bool(_hist_keys(r)) for r in pipeline.read_run(run.dir).history]
    assert marked == [True, True, False, False, True, False]


def test_finish_removes_hooks(tmp_path: Path) -> None:
    model = _model()
    with _init(tmp_path) as run:
        run.watch(model, log="all", log_freq=1)
        assert all(p._backward_hooks for p in model.parameters())
    assert all(not p._backward_hooks for p in model.parameters())
    assert run._watches == []


def test_watching_twice_replaces_the_first_watch(tmp_path: Path) -> None:
    model = _model()
    run = _init(tmp_path)
    run.watch(model, log="gradients", log_freq=1)
    run.watch(model, log="parameters", log_freq=3)
    assert all(len(p._backward_hooks) == 1 for p in model.parameters())
    _train(run, model, 6)
    run.finish()
    history = pipeline.read_run(run.dir).history
    assert [r["_step"] for r in history if _hist_keys(r)] == [2, 5]
    assert all(k.startswith("parameters/") for r in history for k in _hist_keys(r))


def test_several_models_get_distinct_keys(tmp_path: Path) -> None:
    first, second = _model(), _model()
    run = _init(tmp_path)
    run.watch([first, second], log="gradients", log_freq=1)
    opt = torch.optim.SGD([*first.parameters(), *second.parameters()], lr=0.1)
    x = torch.randn(3, 4)
    opt.zero_grad()
    (first(x).sum() + second(x).sum()).backward()
    run.log({"loss": 1.0})
    run.finish()
    row = pipeline.read_run(run.dir).history[0]
    names = [name for name, _ in first.named_parameters()]
    assert _hist_keys(row) == {f"gradients/{n}" for n in names} | {
        f"gradients/model1/{n}" for n in names
    }


def test_non_finite_gradients_are_dropped_and_counted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x = torch.randn(8, 4)
    x[0, 1] = math.nan  # weight.grad's column 1 becomes NaN
    x[0, 3] = math.inf  # and column 3 +inf
    run = _init(tmp_path)
    run.watch(model, log="all", log_freq=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.zero_grad()
    model(x).sum().backward()
    run.log({"loss": 0.0})
    run.finish()
    row = pipeline.read_run(run.dir).history[0]
    hist = row["gradients/weight"]
    assert hist["dropped"] == 4
    assert sum(hist["counts"]) == 4
    assert all(math.isfinite(e) for e in hist["bins"])
    _assert_matches(hist, model.weight.grad)
    assert row["parameters/weight"]["dropped"] == 0
    assert sum(row["parameters/weight"]["counts"]) == 8
    # The bias gradient is sum(dy) = batch size per output: every value equal.
    assert row["gradients/bias"]["dropped"] == 0


def test_histogram_edge_cases() -> None:
    counts, edges, dropped = bin_tensor(torch.full((5,), 2.0))
    assert (edges[0], edges[-1], counts[BINS // 2], dropped) == (1.5, 2.5, 5, 0)
    counts, edges, dropped = bin_tensor(torch.tensor([math.nan, -math.inf]))
    assert (sum(counts), dropped) == (0, 2)
    counts, edges, dropped = bin_tensor(torch.empty(0))
    assert (sum(counts), dropped) == (0, 0)
    counts, edges, dropped = bin_tensor(torch.linspace(-1, 1, 101).half())
    assert (sum(counts), edges[0], edges[-1]) == (101, -1.0, 1.0)
    hist = histogram(torch.tensor([1.0, math.nan, 3.0]), bins=4)
    assert isinstance(hist, Histogram)
    assert hist.bins() == ([1, 0, 0, 1], [1.0, 1.5, 2.0, 2.5, 3.0], 1)


def test_keys_skip_the_name_policy(tmp_path: Path) -> None:
    model = _model()
    run = _init(tmp_path, name_policy="strict")
    run.watch(model, log="gradients", log_freq=1)
    _train(run, model, 1)
    run.finish()
    assert "gradients/0.weight" in pipeline.read_run(run.dir).history[0]


def test_bad_arguments(tmp_path: Path) -> None:
    model = _model()
    run = _init(tmp_path)
    with pytest.raises(ValueError, match="'gradients', 'parameters', 'all'"):
        run.watch(model, log="grads")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="log_freq must be a positive int"):
            run.watch(model, log_freq=bad)
    with pytest.raises(TypeError, match="not str"):
        run.watch("model")
    with pytest.raises(TypeError, match="not int"):
        run.watch([model, 3])
    with pytest.raises(ValueError, match="empty"):
        run.watch([])
    with pytest.raises(TypeError, match="not str"):
        run.unwatch("model")
    assert run._watches == []
    run.finish()


def test_missing_torch_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _init(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'runbus\[torch\]'"):
        run.watch(object())
    run.unwatch()  # nothing watched: needs no torch
    run.finish()


def test_no_memory_growth_over_10000_steps(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 16), torch.randn(32, 1)
    run = _init(tmp_path)
    run.watch(model, log="all", log_freq=10)
    rss = {}
    for step in range(1, 10_001):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        run.log({"loss": loss.item()})
        if step in (2_000, 10_000):
            run.flush()
            gc.collect()
            rss[step] = proc.memory_info().rss
    run.finish()
    growth = rss[10_000] - rss[2_000]
    assert growth < 8 * 2**20, f"RSS grew {growth / 2**20:.1f} MB from step 2,000 to 10,000"
    history = pipeline.read_run(run.dir).history
    assert sum(1 for r in history if "gradients/0.weight" in r) == 1_000
