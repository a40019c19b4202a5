"""Summaries and define_metric: aggregations, globs, overrides, step_sync."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

import pipeline
from pipeline import jsoncodec

NewRun = Callable[..., pipeline.Run]


def finished(run: pipeline.Run) -> pipeline.RunData:
    run.finish()
    return pipeline.read_run(run.dir)


def disk_summary(run: pipeline.Run) -> dict[str, Any]:
    return dict(jsoncodec.loads((run.dir / "summary.json").read_bytes()))


def log_all(run: pipeline.Run, key: str, values: list[Any]) -> None:
    for v in values:
        run.log({key: v})


# -- default: last value ---------------------------------------------------------------


def test_default_summary_is_the_last_value(new_run: NewRun) -> None:
    run = new_run()
    run.log({"loss": 0.9, "acc": 0.1})
    run.log({"loss": 0.5})
    run.log({"loss": 0.7, "note": "hi"})
    assert run.summary["loss"] == 0.7
    data = finished(run)
    assert data.summary == {"acc": 0.1, "loss": 0.7, "note": "hi"}
    assert disk_summary(run) == data.summary


def test_default_last_value_keeps_nan(new_run: NewRun) -> None:
    run = new_run()
    log_all(run, "x", [1.0, math.nan])
    assert math.isnan(finished(run).summary["x"])


# -- aggregations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "goal", "expected"),
    [
        ("min", None, {"min": 1.0}),
        ("max", None, {"max": 4.0}),
        ("mean", None, {"mean": 2.5}),
        ("first", None, {"first": 3.0}),
        ("last", None, {"last": 2.0}),
        ("best", "minimize", {"best": 1.0}),
        ("best", "maximize", {"best": 4.0}),
        ("min,max", None, {"min": 1.0, "max": 4.0}),
        ("first, last ,mean", None, {"first": 3.0, "last": 2.0, "mean": 2.5}),
    ],
)
def test_define_metric_summary(
    new_run: NewRun, summary: str, goal: str | None, expected: dict[str, float]
) -> None:
    run = new_run()
    run.define_metric("loss", summary=summary, goal=goal)
    log_all(run, "loss", [3.0, 1.0, 4.0, 2.0])
    assert run.summary["loss"] == expected
    data = finished(run)
    assert data.summary["loss"] == expected
    assert disk_summary(run)["loss"] == expected


def test_summary_none_hides_the_key(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("debug", summary="none")
    log_all(run, "debug", [1, 2])
    run.log({"kept": 1})
    data = finished(run)
    assert data.summary == {"kept": 1}
    assert [r.get("debug") for r in data.history] == [1, 2, None]  # still in history
    assert "debug" not in disk_summary(run)


def test_best_requires_a_goal(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(ValueError, match="goal"):
        run.define_metric("acc", summary="best")
    with pytest.raises(ValueError, match="goal"):
        run.define_metric("acc", summary="best", goal="upwards")


@pytest.mark.parametrize("summary", ["median", "min,median", "none,min", ""])
def test_unknown_or_bad_aggregations_raise(new_run: NewRun, summary: str) -> None:
    run = new_run()
    with pytest.raises(ValueError, match="summary"):
        run.define_metric("x", summary=summary)


def test_nan_is_skipped_by_min_max_mean_and_best(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("x", summary="min,max,mean,first,last")
    run.define_metric("y", summary="best", goal="maximize")
    for v in (math.nan, 2.0, math.nan, 4.0, math.nan):
        run.log({"x": v, "y": v})
    data = finished(run)
    x = data.summary["x"]
    assert (x["min"], x["max"], x["mean"]) == (2.0, 4.0, 3.0)
    assert math.isnan(x["first"])
    assert math.isnan(x["last"])
    assert data.summary["y"] == {"best": 4.0}


def test_all_nan_metric_has_no_min(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("x", summary="min,last")
    log_all(run, "x", [math.nan, math.nan])
    summary = finished(run).summary
    assert set(summary["x"]) == {"last"}
    assert math.isnan(summary["x"]["last"])


def test_infinities_count_for_min_and_max(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("x", summary="min,max")
    log_all(run, "x", [1.0, -math.inf, math.inf])
    assert finished(run).summary["x"] == {"min": -math.inf, "max": math.inf}


def test_definition_after_logging_starts_from_the_last_value(new_run: NewRun) -> None:
    run = new_run()
    log_all(run, "x", [10.0, 0.5])
    run.define_metric("x", summary="min,max")  # the last value before it carries over
    log_all(run, "x", [3.0, 2.0])
    assert finished(run).summary["x"] == {"min": 0.5, "max": 3.0}


# -- globs -------------------------------------------------------------------------------


def test_glob_applies_to_every_key_under_the_prefix(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("val/*", summary="max")
    run.log({"val": {"acc": 0.5, "f1": 0.1}, "train/acc": 0.5})
    run.log({"val": {"acc": 0.7, "f1": 0.3}, "train/acc": 0.2})
    run.log({"val": {"acc": 0.6, "f1": 0.2}, "train/acc": 0.3})
    summary = finished(run).summary
    assert summary == {"train/acc": 0.3, "val/acc": {"max": 0.7}, "val/f1": {"max": 0.3}}


def test_exact_definition_wins_over_glob(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("val/acc", summary="min")
    run.define_metric("val/*", summary="max")  # defined later, still loses to the exact name
    for a in (0.5, 0.9, 0.7):
        run.log({"val/acc": a, "val/loss": 1 - a})
    summary = finished(run).summary
    assert summary["val/acc"] == {"min": 0.5}
    assert summary["val/loss"] == {"max": pytest.approx(0.5)}


def test_longer_glob_wins_over_shorter_glob(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("val/*", summary="max")
    run.define_metric("val/inner/*", summary="min")
    for v in (1, 3, 2):
        run.log({"val/a": v, "val/inner/b": v})
    summary = finished(run).summary
    assert summary["val/a"] == {"max": 3}
    assert summary["val/inner/b"] == {"min": 1}


def test_define_metric_rejects_inner_star_and_bare_star(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(ValueError, match="trailing"):
        run.define_metric("val/*/acc", summary="max")
    with pytest.raises(ValueError, match="name"):
        run.define_metric("*", summary="max")


def test_define_metric_is_recorded_in_read_run(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("val/*", step_metric="epoch", summary="max,min", goal="maximize")
    metrics = finished(run).metrics
    assert metrics["val/*"]["step_metric"] == "epoch"
    assert metrics["val/*"]["step_sync"] is True
    assert metrics["val/*"]["summary"] == ["max", "min"]
    assert metrics["val/*"]["goal"] == "maximize"


# -- overrides -----------------------------------------------------------------------------


def test_summary_override_shows_the_given_value(new_run: NewRun) -> None:
    run = new_run()
    run.log({"acc": 0.5})
    run.summary["acc"] = 0.99
    run.summary["best_model"] = "epoch-3"
    assert run.summary["acc"] == 0.99
    run.flush()
    data = pipeline.read_run(run.dir)
    assert data.summary["acc"] == 0.99
    assert data.summary["best_model"] == "epoch-3"
    assert disk_summary(run) == data.summary == dict(run.summary)
    assert finished(run).summary == {"acc": 0.99, "best_model": "epoch-3"}


def test_override_does_not_erase_aggregations(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("loss", summary="min,max")
    log_all(run, "loss", [5.0, 0.5, 2.0])
    run.summary["loss"] = 42
    assert run.summary["loss"] == 42
    run.flush()
    assert pipeline.read_run(run.dir).summary["loss"] == 42
    # Logging again shows the aggregation over every value, also those before the override.
    run.log({"loss": 3.0})
    assert run.summary["loss"] == {"min": 0.5, "max": 5.0}
    data = finished(run)
    assert data.summary["loss"] == {"min": 0.5, "max": 5.0}
    assert disk_summary(run)["loss"] == {"min": 0.5, "max": 5.0}


def test_override_of_a_plain_key_is_replaced_by_the_next_logged_value(new_run: NewRun) -> None:
    run = new_run()
    run.log({"x": 1})
    run.summary["x"] = 100
    run.log({"x": 2})
    assert run.summary["x"] == 2
    assert finished(run).summary["x"] == 2


def test_summary_update_with_several_keys(new_run: NewRun) -> None:
    run = new_run()
    run.summary.update({"a": 1, "b": [1, 2]}, c={"nested": True})
    assert dict(run.summary) == {"a": 1, "b": [1, 2], "c": {"nested": True}}
    assert finished(run).summary == {"a": 1, "b": [1, 2], "c": {"nested": True}}


def test_del_summary_key(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1, "b": 2})
    run.summary["c"] = 3
    del run.summary["a"]
    del run.summary["c"]
    assert "a" not in run.summary
    assert dict(run.summary) == {"b": 2}
    with pytest.raises(KeyError):
        del run.summary["never-there"]
    data = finished(run)
    assert data.summary == {"b": 2}
    assert disk_summary(run) == {"b": 2}


def test_deleted_key_comes_back_when_logged_again(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1})
    del run.summary["a"]
    run.log({"a": 5})
    assert finished(run).summary == {"a": 5}


def test_summary_value_must_be_storable(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(TypeError, match="'bad'"):
        run.summary["bad"] = object()
    with pytest.raises(TypeError, match="must be str"):
        run.summary.update({1: 2})
    run.log({"ok": 1})
    assert finished(run).summary == {"ok": 1}


def test_disk_summary_matches_read_run_with_every_kind_of_entry(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("loss", summary="min,mean")
    run.define_metric("acc", summary="best", goal="max")
    run.define_metric("hidden", summary="none")
    for i in range(10):
        run.log({"loss": 1 / (i + 1), "acc": i / 10, "hidden": i, "plain": i})
    run.summary["extra"] = {"k": [1, 2]}
    del run.summary["plain"]
    data = finished(run)
    assert disk_summary(run) == data.summary
    assert set(data.summary) == {"acc", "extra", "loss"}
    assert data.summary["acc"] == {"best": 0.9}


# -- step_sync -------------------------------------------------------------------------------


def test_step_metric_is_filled_into_rows_that_lack_it(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("val_loss", step_metric="epoch")
    run.log({"val_loss": 1.0})  # no epoch yet: nothing to fill
    run.log({"epoch": 1, "val_loss": 0.9})
    run.log({"val_loss": 0.8})
    run.log({"epoch": 2})
    run.log({"val_loss": 0.7})
    run.log({"other": 1})  # not a metric that uses epoch
    rows = finished(run).history
    assert [r.get("epoch") for r in rows] == [None, 1, 1, 2, 2, None]
    assert [r.get("val_loss") for r in rows] == [1.0, 0.9, 0.8, None, 0.7, None]


def test_step_sync_with_a_glob(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("val/*", step_metric="epoch")
    run.log({"epoch": 3, "train/loss": 1.0})
    run.log({"val/acc": 0.5})
    run.log({"val/f1": 0.4, "train/loss": 0.5})
    run.log({"train/loss": 0.4})
    rows = finished(run).history
    assert [r.get("epoch") for r in rows] == [3, 3, 3, None]


def test_step_sync_false_disables_filling(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("val_loss", step_metric="epoch", step_sync=False)
    run.log({"epoch": 1})
    run.log({"val_loss": 0.5})
    data = finished(run)
    assert "epoch" not in data.history[1]
    assert data.metrics["val_loss"]["step_sync"] is False


def test_step_sync_fills_open_rows_too(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("acc", step_metric="epoch")
    run.log({"epoch": 4})
    run.log({"acc": 0.5}, commit=False)
    run.flush()
    assert pipeline.read_run(run.dir).history[-1]["epoch"] == 4
    last = finished(run).history[-1]
    assert (last["_step"], last["epoch"], last["acc"]) == (1, 4, 0.5)
