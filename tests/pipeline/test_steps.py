"""Step rules, row shape and value round trips, seen through ``pipeline.read_run``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import pipeline
from pipeline import jsoncodec

NewRun = Callable[..., pipeline.Run]


def user_rows(data: pipeline.RunData) -> list[dict[str, Any]]:
    """History rows with ``_step`` but without the wall-clock columns."""
    return [
        {k: v for k, v in r.items() if k not in ("_timestamp", "_runtime")} for r in data.history
    ]


def finished(run: pipeline.Run) -> pipeline.RunData:
    run.finish()
    return pipeline.read_run(run.dir)


def log_and_flush(run: pipeline.Run, calls: list[tuple[dict[str, Any], int]]) -> None:
    """Log each ``(data, step)``, then flush.

    A refused call's StepWarning is issued by the pipeline, so waiting for the
    flush is what makes sure it has been issued.
    """
    for data, step in calls:
        run.log(data, step=step)
    run.flush()


# -- one call, one step ------------------------------------------------------------


def test_each_log_call_is_a_new_step(new_run: NewRun) -> None:
    run = new_run()
    run.log({"loss": 0.5})
    run.log({"loss": 0.4})
    run.log({"acc": 0.9})
    assert user_rows(finished(run)) == [
        {"_step": 0, "loss": 0.5},
        {"_step": 1, "loss": 0.4},
        {"_step": 2, "acc": 0.9},
    ]


def test_commit_false_merges_into_the_same_row(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, commit=False)
    run.log({"b": 2}, commit=False)
    run.log({"c": 3})
    run.log({"d": 4})
    assert user_rows(finished(run)) == [
        {"_step": 0, "a": 1, "b": 2, "c": 3},
        {"_step": 1, "d": 4},
    ]


def test_commit_false_later_value_of_a_key_wins(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, commit=False)
    run.log({"a": 2})
    assert user_rows(finished(run)) == [{"_step": 0, "a": 2}]


def test_open_commit_false_row_is_closed_by_finish(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1})
    run.log({"b": 2}, commit=False)
    assert user_rows(finished(run)) == [{"_step": 0, "a": 1}, {"_step": 1, "b": 2}]


def test_log_of_empty_dict_advances_the_step(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1})
    run.log({})
    run.log({"a": 2})
    assert user_rows(finished(run)) == [{"_step": 0, "a": 1}, {"_step": 2, "a": 2}]


# -- explicit steps ------------------------------------------------------------------


def test_explicit_equal_step_merges(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, step=3)
    run.log({"b": 2}, step=3)
    assert user_rows(finished(run)) == [{"_step": 3, "a": 1, "b": 2}]


def test_explicit_greater_step_closes_the_row_and_opens_that_step(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, step=0)
    run.log({"a": 2}, step=5)
    run.log({"a": 3}, step=9)
    assert user_rows(finished(run)) == [
        {"_step": 0, "a": 1},
        {"_step": 5, "a": 2},
        {"_step": 9, "a": 3},
    ]


def test_explicit_step_row_is_held_until_commit_true(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, step=4)
    run.log({"b": 2}, step=4, commit=True)
    run.log({"c": 3})
    assert user_rows(finished(run)) == [
        {"_step": 4, "a": 1, "b": 2},
        {"_step": 5, "c": 3},
    ]


def test_call_without_step_merges_into_held_row_and_commits_it(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, step=4)
    run.log({"b": 2})
    run.log({"c": 3})
    assert user_rows(finished(run)) == [
        {"_step": 4, "a": 1, "b": 2},
        {"_step": 5, "c": 3},
    ]


def test_explicit_step_row_is_held_until_finish(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1})
    run.log({"b": 2}, step=7)
    run.flush()
    # Held, not committed: a read during the run shows it as the open (partial) row.
    assert user_rows(pipeline.read_run(run.dir))[-1] == {"_step": 7, "b": 2}
    run.log({"c": 3}, step=7)
    assert user_rows(finished(run)) == [{"_step": 0, "a": 1}, {"_step": 7, "b": 2, "c": 3}]


def test_gaps_in_steps_are_allowed(new_run: NewRun) -> None:
    run = new_run()
    for step in (0, 10, 1000, 1001):
        run.log({"x": step}, step=step)
    assert [r["_step"] for r in finished(run).history] == [0, 10, 1000, 1001]


def test_explicit_step_accepts_numpy_int(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, step=np.int64(3))  # type: ignore[arg-type]
    assert user_rows(finished(run)) == [{"_step": 3, "a": 1}]


# -- refused calls -------------------------------------------------------------------


def test_lower_step_is_refused_with_a_warning_naming_step_and_keys(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, step=5)
    run.log({"a": 2}, step=6)
    with pytest.warns(pipeline.StepWarning, match=r"log\(step=2\) of keys \['lost', 'z'\]"):
        log_and_flush(run, [({"z": 1, "lost": 2}, 2)])
    data = finished(run)
    assert user_rows(data) == [{"_step": 5, "a": 1}, {"_step": 6, "a": 2}]
    assert data.refused == 1
    assert data.metadata["refused"] == 1
    assert data.refused_calls == [
        {
            "step": 2,
            "current_step": 6,
            "data": {"z": 1, "lost": 2},
            "reason": "step 2 is lower than the current step 6",
        }
    ]


def test_refused_calls_are_counted_and_do_not_disturb_later_steps(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 0}, step=10)
    with pytest.warns(pipeline.StepWarning) as record:
        log_and_flush(run, [({"old": step}, step) for step in range(3)])
    assert len(record) == 3
    run.log({"b": 1})  # still merges into the held step 10, then commits it
    run.log({"c": 2})
    data = finished(run)
    assert user_rows(data) == [{"_step": 10, "a": 0, "b": 1}, {"_step": 11, "c": 2}]
    assert data.refused == 3
    assert data.metadata["refused"] == 3
    assert [c["step"] for c in data.refused_calls] == [0, 1, 2]
    assert "old" not in data.summary


def test_step_lower_than_a_committed_auto_step_is_refused(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1})
    run.log({"a": 2})  # rows 0 and 1 committed, current step is 2
    with pytest.warns(pipeline.StepWarning, match=r"step=1\b"):
        log_and_flush(run, [({"a": 3}, 1)])
    data = finished(run)
    assert [r["a"] for r in data.history] == [1, 2]
    assert data.refused == 1


# -- row columns ---------------------------------------------------------------------


def test_rows_carry_step_timestamp_and_runtime(new_run: NewRun) -> None:
    before = time.time()
    run = new_run()
    for i in range(20):
        run.log({"i": i})
    run.log({"j": 1}, step=40)
    data = finished(run)
    after = time.time()
    assert [r["_step"] for r in data.history] == [*range(20), 40]
    runtimes = [r["_runtime"] for r in data.history]
    assert data.start_ts is not None
    for row in data.history:
        assert isinstance(row["_timestamp"], float)
        assert before <= row["_timestamp"] <= after
        assert row["_runtime"] >= 0
        assert row["_runtime"] == pytest.approx(row["_timestamp"] - data.start_ts, abs=1e-6)
    assert runtimes == sorted(runtimes)


# -- values --------------------------------------------------------------------------


def test_nested_dicts_flatten_with_slash(new_run: NewRun) -> None:
    run = new_run()
    run.log({"train": {"loss": 0.1, "opt": {"lr": 0.01}}, "epoch": 1})
    data = finished(run)
    assert user_rows(data) == [{"_step": 0, "train/loss": 0.1, "train/opt/lr": 0.01, "epoch": 1}]
    assert data.summary == {"epoch": 1, "train/loss": 0.1, "train/opt/lr": 0.01}


def test_numpy_scalars_become_python_numbers(new_run: NewRun) -> None:
    run = new_run()
    run.log(
        {
            "f32": np.float32(0.5),
            "f64": np.float64(0.25),
            "i64": np.int64(7),
            "u8": np.uint8(200),
            "b": np.bool_(True),
            "zero_d": np.array(1.5),
            "nested": {"x": np.int32(-3)},
        }
    )
    row = finished(run).history[0]
    expected = {
        "f32": (0.5, float),
        "f64": (0.25, float),
        "i64": (7, int),
        "u8": (200, int),
        "b": (True, bool),
        "zero_d": (1.5, float),
        "nested/x": (-3, int),
    }
    for key, (value, kind) in expected.items():
        assert row[key] == value, key
        assert type(row[key]) is kind, key


def test_short_numpy_vectors_and_lists_of_scalars_are_lists(new_run: NewRun) -> None:
    run = new_run()
    run.log(
        {
            "lst": [1, 2.5, "three", None, True],
            "tup": (4, 5),
            "vec": np.arange(3),
            "nf": [math.nan, math.inf, -math.inf, 0.0],
        }
    )
    row = finished(run).history[0]
    assert row["lst"] == [1, 2.5, "three", None, True]
    assert row["tup"] == [4, 5]
    assert row["vec"] == [0, 1, 2]
    assert all(type(x) is int for x in row["vec"])
    assert math.isnan(row["nf"][0])
    assert row["nf"][1:] == [math.inf, -math.inf, 0.0]


def test_big_ints_round_trip(new_run: NewRun) -> None:
    run = new_run()
    values = {"max_u64": 2**64 - 1, "min_i64": -(2**63), "big": 2**62 + 1, "neg": -(2**40)}
    run.log(values)
    data = finished(run)
    row = data.history[0]
    for k, v in values.items():
        assert row[k] == v
        assert type(row[k]) is int
    assert {k: data.summary[k] for k in values} == values


def test_nonfinite_floats_round_trip_in_history(new_run: NewRun) -> None:
    run = new_run()
    run.log({"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "ok": 1.0})
    run.log({"nan": np.float32("nan"), "inf": np.float64("inf")})
    rows = finished(run).history
    assert math.isnan(rows[0]["nan"])
    assert rows[0]["inf"] == math.inf
    assert rows[0]["ninf"] == -math.inf
    assert rows[0]["ok"] == 1.0
    assert math.isnan(rows[1]["nan"])
    assert rows[1]["inf"] == math.inf


def test_nonfinite_floats_round_trip_through_config_and_summary(new_run: NewRun) -> None:
    cfg = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "nested": {"x": -math.inf}}
    run = new_run(config=cfg)
    run.log({"s_nan": math.nan, "s_inf": math.inf, "s_ninf": -math.inf})
    run.summary["o_nan"] = math.nan
    data = finished(run)

    config_json = jsoncodec.loads((run.dir / "config.json").read_bytes())
    summary_json = jsoncodec.loads((run.dir / "summary.json").read_bytes())
    for config in (data.config, config_json):
        assert math.isnan(config["nan"])
        assert config["inf"] == math.inf
        assert config["ninf"] == -math.inf
        assert config["nested"] == {"x": -math.inf}
    for summary in (data.summary, summary_json):
        assert math.isnan(summary["s_nan"])
        assert summary["s_inf"] == math.inf
        assert summary["s_ninf"] == -math.inf
        assert math.isnan(summary["o_nan"])


def test_strings_bools_and_none_are_stored_as_given(new_run: NewRun) -> None:
    run = new_run()
    run.log({"s": "text", "t": True, "f": False, "n": None, "z": 0})
    row = finished(run).history[0]
    assert row["s"] == "text"
    assert row["t"] is True
    assert row["f"] is False
    assert row["n"] is None
    assert row["z"] == 0
    assert type(row["z"]) is int


# -- flush ---------------------------------------------------------------------------


def test_flush_returns_true_and_makes_every_row_readable(new_run: NewRun) -> None:
    run = new_run(config={"lr": 0.1})
    for i in range(100):
        run.log({"i": i})
    run.log({"open": 1}, commit=False)
    run.config["batch"] = 32
    run.summary["best"] = 7
    assert run.flush() is True

    assert not run.finished
    data = pipeline.read_run(run.dir)
    assert data.state == "running"
    rows = user_rows(data)
    assert rows[:100] == [{"_step": i, "i": i} for i in range(100)]
    assert rows[100] == {"_step": 100, "open": 1}  # the open row, stored partial
    assert len(rows) == 101
    assert data.config == {"lr": 0.1, "batch": 32}
    assert jsoncodec.loads((run.dir / "config.json").read_bytes()) == {"lr": 0.1, "batch": 32}
    summary_json = jsoncodec.loads((run.dir / "summary.json").read_bytes())
    assert summary_json["i"] == 99
    assert summary_json["best"] == 7


def test_open_row_keeps_growing_after_a_flush(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, commit=False)
    run.flush()
    run.log({"b": 2}, commit=False)
    run.flush()
    assert user_rows(pipeline.read_run(run.dir)) == [{"_step": 0, "a": 1, "b": 2}]
    run.log({"c": 3})
    assert user_rows(finished(run)) == [{"_step": 0, "a": 1, "b": 2, "c": 3}]


def test_summary_json_matches_read_run_after_flush(new_run: NewRun) -> None:
    run = new_run()
    run.define_metric("loss", summary="min,last")
    for v in (3.0, 1.0, 2.0):
        run.log({"loss": v, "acc": v / 10})
    run.flush()
    on_disk = jsoncodec.loads((run.dir / "summary.json").read_bytes())
    assert on_disk == pipeline.read_run(run.dir).summary
    assert on_disk["loss"] == {"min": 1.0, "last": 2.0}


def test_open_row_counts_in_the_summary_once_committed(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1})
    run.log({"a": 5, "b": 2}, commit=False)
    run.flush()
    # Everywhere the same: the open row is history, but not yet summary.
    on_disk = jsoncodec.loads((run.dir / "summary.json").read_bytes())
    assert on_disk == pipeline.read_run(run.dir).summary == dict(run.summary) == {"a": 1}
    data = finished(run)
    assert data.summary == {"a": 5, "b": 2}
    assert jsoncodec.loads((run.dir / "summary.json").read_bytes()) == data.summary
