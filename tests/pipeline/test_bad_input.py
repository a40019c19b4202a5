"""Input runbus can never store: raised at the call site, naming what is wrong, stored nowhere."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipeline

NewRun = Callable[..., pipeline.Run]


def user_rows(data: pipeline.RunData) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ("_timestamp", "_runtime")} for r in data.history
    ]


def assert_only_good_calls_stored(run: pipeline.Run) -> None:
    """Log one good call after the bad ones: it must be step 0, the only row."""
    run.log({"good": 1})
    run.finish()
    data = pipeline.read_run(run.dir)
    assert user_rows(data) == [{"_step": 0, "good": 1}]
    assert data.summary == {"good": 1}
    assert data.refused == 0


# -- log() data ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [[("a", 1)], "a=1", 3.0, None, {"a", "b"}])
def test_log_of_a_non_mapping_raises_type_error(new_run: NewRun, data: Any) -> None:
    run = new_run()
    with pytest.raises(TypeError, match=f"dict.*not {type(data).__name__}"):
        run.log(data)
    assert_only_good_calls_stored(run)


def test_log_takes_any_mapping(new_run: NewRun) -> None:
    run = new_run()
    run.log(OrderedDict(a=1))
    run.finish()
    assert user_rows(pipeline.read_run(run.dir)) == [{"_step": 0, "a": 1}]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"ok": 1, 3: 2}, r"must be str, not int \(3\)"),
        ({"ok": 1, ("a", "b"): 2}, r"must be str, not tuple"),
        ({"ok": 1, None: 2}, r"must be str, not NoneType"),
        ({"outer": {7: 1}}, r"must be str, not int \(7\) inside 'outer'"),
    ],
)
def test_non_str_key_raises_naming_it(new_run: NewRun, data: Any, match: str) -> None:
    run = new_run()
    with pytest.raises(TypeError, match=match):
        run.log(data)
    assert_only_good_calls_stored(run)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        ({1, 2}, "set"),
        (b"bytes", "bytes"),
        (1 + 2j, "complex"),
        (print, "builtin_function_or_method"),
    ],
)
def test_unstorable_value_raises_naming_key_and_type(
    new_run: NewRun, value: Any, type_name: str
) -> None:
    run = new_run()
    with pytest.raises(TypeError, match=f"'bad' has type {type_name}"):
        run.log({"first": 1.0, "bad": value, "last": 2.0})
    assert_only_good_calls_stored(run)


def test_unstorable_value_inside_a_nested_dict_names_the_flat_key(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(TypeError, match="'train/opt' has type object"):
        run.log({"train": {"loss": 1.0, "opt": object()}})
    assert_only_good_calls_stored(run)


def test_unstorable_value_inside_a_list_names_its_index(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(TypeError, match=r"'vals\[1\]' has type object"):
        run.log({"vals": [1, object()]})
    with pytest.raises(TypeError, match=r"'vals\[0\]' has type list"):
        run.log({"vals": [[1]]})
    assert_only_good_calls_stored(run)


def test_integer_outside_64_bits_raises_naming_the_key(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(ValueError, match=r"'huge'.*64-bit"):
        run.log({"huge": 2**64})
    with pytest.raises(ValueError, match=r"'tiny'.*64-bit"):
        run.log({"ok": 1.5, "tiny": -(2**63) - 1})
    assert_only_good_calls_stored(run)


def test_a_large_numpy_array_is_stored_as_a_histogram(new_run: NewRun) -> None:
    run = new_run()
    values = np.arange(100, dtype=float).reshape(10, 10)
    run.log({"weights": values})
    values[:] = -1.0  # logged arrays are copied at the call
    run.finish()
    data = pipeline.read_run(run.dir)
    hist = data.history[0]["weights"]
    assert hist["_type"] == "histogram"
    assert sum(hist["counts"]) == 100
    assert hist["bins"][0] == 0.0
    assert hist["bins"][-1] == 99.0


def test_failed_call_in_an_open_row_leaves_the_row_as_it_was(new_run: NewRun) -> None:
    run = new_run()
    run.log({"a": 1}, commit=False)
    with pytest.raises(TypeError, match="'b'"):
        run.log({"a": 99, "b": object()})
    run.log({"c": 3})
    run.finish()
    assert user_rows(pipeline.read_run(run.dir)) == [{"_step": 0, "a": 1, "c": 3}]


def test_caller_dict_is_copied(new_run: NewRun) -> None:
    run = new_run()
    nested = {"y": 2}
    data: dict[str, Any] = {"x": 1, "nested": nested}
    run.log(data, commit=False)
    data["x"] = 100
    nested["y"] = 200
    data["z"] = 300
    run.log({})
    run.finish()
    assert user_rows(pipeline.read_run(run.dir)) == [{"_step": 0, "x": 1, "nested/y": 2}]


# -- step / commit arguments ---------------------------------------------------------------


@pytest.mark.parametrize("step", [-1, -100, np.int64(-2)])
def test_negative_step_raises_value_error(new_run: NewRun, step: Any) -> None:
    run = new_run()
    with pytest.raises(ValueError, match=r"step=-\d+"):
        run.log({"x": 1}, step=step)
    assert_only_good_calls_stored(run)


@pytest.mark.parametrize("step", ["3", 3.0, True, np.float64(3.0), [3]])
def test_non_int_step_raises_type_error(new_run: NewRun, step: Any) -> None:
    run = new_run()
    with pytest.raises(TypeError, match=r"step=\.\.\.\) must be an int"):
        run.log({"x": 1}, step=step)
    assert_only_good_calls_stored(run)


@pytest.mark.parametrize("commit", ["yes", 1, 0])
def test_non_bool_commit_raises_type_error(new_run: NewRun, commit: Any) -> None:
    run = new_run()
    with pytest.raises(TypeError, match="commit"):
        run.log({"x": 1}, commit=commit)
    assert_only_good_calls_stored(run)


# -- finished runs -----------------------------------------------------------------------------


def test_log_after_finish_raises_run_finished_error(new_run: NewRun) -> None:
    run = new_run()
    run.log({"x": 1})
    run.finish()
    with pytest.raises(pipeline.RunFinishedError, match="finished"):
        run.log({"x": 2})
    with pytest.raises(pipeline.RunFinishedError):
        run.define_metric("x", summary="max")
    with pytest.raises(pipeline.RunFinishedError):
        run.summary["x"] = 3
    assert issubclass(pipeline.RunFinishedError, RuntimeError)
    data = pipeline.read_run(run.dir)
    assert [r["x"] for r in data.history] == [1]
    assert data.summary == {"x": 1}


def test_finish_exit_code_must_be_an_int(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(TypeError, match="exit_code"):
        run.finish(exit_code="0")  # type: ignore[arg-type]
    assert not run.finished
    run.finish()


def test_module_level_calls_without_a_run_raise(runs_dir: Path) -> None:
    assert pipeline.current_run() is None
    with pytest.raises(RuntimeError, match=r"pipeline\.init\(\)"):
        pipeline.log({"x": 1})
    with pytest.raises(RuntimeError, match=r"pipeline\.init\(\)"):
        pipeline.flush()
    pipeline.finish()  # nothing to finish: harmless


# -- init() arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"resume": "maybe"}, ValueError, r"resume='maybe'"),
        ({"id": "bad id!"}, ValueError, r"id='bad id!'"),
        ({"id": ""}, ValueError, r"id=''"),
        ({"id": "x" * 65}, ValueError, r"id="),
        ({"tags": "x"}, TypeError, r"tags"),
        ({"tags": ["ok", 3]}, TypeError, r"tags.*3"),
        ({"settings": {"nope": 1}}, ValueError, r"'nope'"),
        ({"settings": {"name_policy": "loud"}}, ValueError, r"name_policy"),
        ({"settings": {"flush_interval": 0}}, ValueError, r"flush_interval"),
        ({"settings": {"max_backlog": -1}}, ValueError, r"max_backlog"),
        ({"settings": "quiet"}, TypeError, r"settings"),
        ({"mode": "sometimes"}, ValueError, r"mode"),
        ({"project": 3}, TypeError, r"project"),
        ({"name": ["a"]}, TypeError, r"name"),
        ({"config": [1, 2]}, TypeError, r"config"),
        ({"config": {1: 2}}, TypeError, r"config keys"),
        ({"config": {"x": {"$nf": "NaN"}}}, ValueError, r"'x': its key.*reserved"),
        ({"sinks": "disk"}, TypeError, r"sinks"),
        ({"settings": {"sinks": ["no-such-sink"]}}, ValueError, r"'no-such-sink'"),
    ],
)
def test_bad_init_arguments_raise_naming_the_argument(
    runs_dir: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    target = runs_dir / "runs"
    with pytest.raises(error, match=match):
        pipeline.init(dir=target, **kwargs)
    assert not target.exists()  # nothing was created
    assert pipeline.current_run() is None


def test_define_metric_bad_arguments(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(ValueError, match="name"):
        run.define_metric("")
    with pytest.raises(ValueError, match="step_metric"):
        run.define_metric("x", step_metric="ep*")
    with pytest.raises(ValueError, match="goal"):
        run.define_metric("x", summary="min", goal="sideways")
    run.finish()
    assert pipeline.read_run(run.dir).metrics == {}


def test_values_that_look_odd_but_are_fine(new_run: NewRun) -> None:
    run = new_run()
    run.log({"empty": {}, "s": "", "neg0": -0.0, "nan": math.nan, "t": (1,)})
    run.finish()
    row = pipeline.read_run(run.dir).history[0]
    assert "empty" not in row
    assert row["s"] == ""
    assert math.copysign(1.0, row["neg0"]) == -1.0
    assert math.isnan(row["nan"])
    assert row["t"] == [1]


def test_the_reserved_nonfinite_tag_is_refused_as_a_top_level_key(runs_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"config key '\$nf' is reserved"):
        pipeline.init(project="p", dir=runs_dir, config={"$nf": "NaN"})
    run = pipeline.init(project="p", dir=runs_dir)
    with pytest.raises(ValueError, match=r"summary key '\$nf' is reserved"):
        run.summary["$nf"] = "NaN"
    run.summary["fine"] = 1
    run.finish()
    assert pipeline.read_run(run.dir).summary == {"fine": 1}
