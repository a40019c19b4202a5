"""The Run API: identity, config, name policy, context managers, disabled mode."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline import jsoncodec

NewRun = Callable[..., pipeline.Run]


def finished(run: pipeline.Run) -> pipeline.RunData:
    run.finish()
    return pipeline.read_run(run.dir)


def disk_config(run: pipeline.Run) -> dict[str, Any]:
    return dict(jsoncodec.loads((run.dir / "config.json").read_bytes()))


def log_each(run: pipeline.Run, calls: list[dict[str, Any]]) -> None:
    for data in calls:
        run.log(data)


# -- identity ------------------------------------------------------------------------


def test_identity_and_run_directory(new_run: NewRun, runs_dir: Path) -> None:
    run = new_run(project="mnist", name="first", id="run01", tags=["a", "b"], notes="n", group="g")
    assert (run.id, run.name, run.project) == ("run01", "first", "mnist")
    assert (run.tags, run.notes, run.group) == (("a", "b"), "n", "g")
    assert run.dir.parent == runs_dir
    assert run.dir.name.startswith("run-")
    assert run.dir.name.endswith("-run01")
    assert run.dir.is_dir()  # exists as soon as init() returns
    data = finished(run)
    assert (data.id, data.name, data.project) == ("run01", "first", "mnist")
    assert data.metadata["tags"] == ["a", "b"]
    assert data.metadata["notes"] == "n"
    assert data.metadata["group"] == "g"
    assert data.state == "finished"
    assert data.metadata["exit_code"] == 0


def test_read_run_of_the_runs_directory_reads_the_latest_run(new_run: NewRun) -> None:
    first = new_run()
    first.finish()
    second = new_run()
    second.log({"x": 1})
    second.finish()
    assert pipeline.read_run(first.dir.parent).id == second.id


def test_generated_ids_are_distinct(new_run: NewRun) -> None:
    runs = [new_run() for _ in range(5)]
    for run in runs:
        run.finish()
    assert len({r.id for r in runs}) == 5
    assert len({r.dir for r in runs}) == 5


def test_finish_with_nonzero_exit_code_marks_the_run_failed(new_run: NewRun) -> None:
    run = new_run()
    run.log({"x": 1})
    run.finish(exit_code=3)
    data = pipeline.read_run(run.dir)
    assert data.state == "failed"
    assert data.metadata["exit_code"] == 3
    assert run.finished


def test_finish_twice_is_harmless(new_run: NewRun) -> None:
    run = new_run()
    run.log({"x": 1})
    run.finish()
    run.finish()
    run.finish(exit_code=1)  # the first finish decided the outcome
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert len(data.history) == 1


def test_flush_after_finish_returns_true(new_run: NewRun) -> None:
    run = new_run()
    run.finish()
    assert run.flush() is True


# -- config --------------------------------------------------------------------------


def test_config_from_init_update_item_and_attribute(new_run: NewRun) -> None:
    run = new_run(config={"lr": 1e-3, "layers": [64, 32], "opt": {"name": "adam"}})
    run.config.update({"batch": 64})
    run.config.update(epochs=10)
    run.config["dropout"] = 0.1
    run.config.seed = 7
    assert run.config["lr"] == 1e-3
    assert run.config.lr == 1e-3
    assert run.config.seed == 7
    assert run.config["opt"] == {"name": "adam"}
    expected = {
        "lr": 1e-3,
        "layers": [64, 32],
        "opt": {"name": "adam"},
        "batch": 64,
        "epochs": 10,
        "dropout": 0.1,
        "seed": 7,
    }
    assert dict(run.config) == expected
    assert run.config.as_dict() == expected
    data = finished(run)
    assert data.config == expected
    assert disk_config(run) == expected


def test_config_is_on_disk_after_flush(new_run: NewRun) -> None:
    run = new_run(config={"a": 1})
    run.config["b"] = 2
    run.flush()
    assert disk_config(run) == {"a": 1, "b": 2}
    assert pipeline.read_run(run.dir).config == {"a": 1, "b": 2}
    run.config["a"] = 3
    run.flush()
    assert disk_config(run) == {"a": 3, "b": 2}


def test_config_values_are_copied(new_run: NewRun) -> None:
    params = {"layers": [1, 2]}
    run = new_run(config=params)
    params["layers"].append(3)
    assert run.config["layers"] == [1, 2]
    assert finished(run).config == {"layers": [1, 2]}


def test_config_takes_numpy_values(new_run: NewRun) -> None:
    np = pytest.importorskip("numpy")
    run = new_run(config={"lr": np.float32(0.5), "shape": np.array([2, 3]), "n": np.int64(4)})
    config = finished(run).config
    assert config == {"lr": 0.5, "shape": [2, 3], "n": 4}
    assert type(config["n"]) is int


def test_missing_config_attribute_raises_attribute_error(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(AttributeError, match="nope"):
        _ = run.config.nope
    with pytest.raises(KeyError):
        _ = run.config["nope"]


@pytest.mark.parametrize(
    "apply",
    [
        lambda c: c.update({"good": 1, "bad": object()}),
        lambda c: c.update(good=1, bad={1, 2}),
        lambda c: c.__setitem__("bad", object()),
        lambda c: setattr(c, "bad", object()),
        lambda c: c.update({"good": 1, "bad": {"inner": object()}}),
    ],
)
def test_unstorable_config_value_raises_and_nothing_is_applied(
    new_run: NewRun, apply: Callable[[pipeline.Config], None]
) -> None:
    run = new_run(config={"keep": 1})
    with pytest.raises(TypeError, match="'bad"):
        apply(run.config)
    assert dict(run.config) == {"keep": 1}
    data = finished(run)
    assert data.config == {"keep": 1}
    assert disk_config(run) == {"keep": 1}


def test_unstorable_init_config_raises_and_creates_no_run(runs_dir: Path) -> None:
    with pytest.raises(TypeError, match="'bad'"):
        pipeline.init(dir=runs_dir, id="cfg1", config={"ok": 1, "bad": object()})
    assert list(runs_dir.iterdir()) == []
    assert pipeline.current_run() is None
    # The id is still free once the config is fixed.
    run = pipeline.init(dir=runs_dir, id="cfg1", config={"ok": 1})
    assert finished(run).config == {"ok": 1}


def test_config_rejects_the_reserved_nonfinite_tag_key(new_run: NewRun) -> None:
    # {"$nf": "NaN"} is how NaN is written on disk; stored as given it would read back as NaN.
    run = new_run(config={"keep": 1})
    with pytest.raises(ValueError, match=r"'fmt'.*'\$nf'"):
        run.config.update({"ok": 2, "fmt": {"$nf": "NaN"}})
    with pytest.raises(ValueError, match=r"'\$nf'"):
        run.summary["s"] = {"$nf": "Infinity"}
    data = finished(run)
    assert data.config == {"keep": 1}
    assert data.summary == {}


def test_config_keys_must_be_str(new_run: NewRun) -> None:
    run = new_run()
    with pytest.raises(TypeError, match="str"):
        run.config.update({1: "x"})
    with pytest.raises(TypeError, match="removed"):
        del run.config["x"]


def test_config_change_after_finish_raises(new_run: NewRun) -> None:
    run = new_run()
    run.finish()
    with pytest.raises(pipeline.RunFinishedError):
        run.config["late"] = 1


# -- name policy -----------------------------------------------------------------------


def test_bad_name_warns_once_and_is_still_stored(new_run: NewRun) -> None:
    run = new_run()
    with pytest.warns(pipeline.NameWarning, match="'bad name'") as record:
        log_each(run, [{"bad name": i, "good": i} for i in range(50)])
    assert len([w for w in record if issubclass(w.category, pipeline.NameWarning)]) == 1
    data = finished(run)
    assert [r["bad name"] for r in data.history] == list(range(50))
    assert data.summary["bad name"] == 49
    assert data.metadata["bad_names"] == ["bad name"]


def test_each_bad_name_warns_once(new_run: NewRun) -> None:
    run = new_run()
    with pytest.warns(pipeline.NameWarning) as record:
        log_each(run, [{"1st": 1, "a-b": 2, "nested": {"x y": 3}, "ok/fine": 4}] * 3)
    names = sorted(str(w.message).split("'")[1] for w in record)
    assert names == ["1st", "a-b", "nested/x y"]


def test_name_warning_points_at_the_callers_line(new_run: NewRun) -> None:
    run = new_run()

    def calls() -> None:
        run.log({"bad-name": 1})
        run.log({"nested": {"bad name": 1}})  # flattened on a slower path
        pipeline.log({"bad.name": 1})  # one more frame inside runbus

    with pytest.warns(pipeline.NameWarning) as record:
        calls()
    lines = [calls.__code__.co_firstlineno + n for n in (1, 2, 3)]
    assert [(w.filename, w.lineno) for w in record] == [(__file__, n) for n in lines]


@pytest.mark.parametrize("name", ["train/loss", "a/_b", "a1/b_2/C", "x", "CamelCase_9"])
def test_valid_names_do_not_warn(new_run: NewRun, name: str) -> None:
    run = new_run()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pipeline.NameWarning)
        run.log({name: 1})
    assert finished(run).history[0][name] == 1


def test_strict_policy_raises_naming_the_key_and_stores_nothing(new_run: NewRun) -> None:
    run = new_run(settings={"name_policy": "strict"})
    with pytest.raises(ValueError, match="'bad name'"):
        run.log({"fine": 1, "bad name": 2})
    run.log({"fine": 3})
    data = finished(run)
    assert [{k: v for k, v in r.items() if not k.startswith("_t")} for r in data.history] == [
        {"_step": 0, "_runtime": data.history[0]["_runtime"], "fine": 3}
    ]
    assert "bad name" not in data.summary


def test_strict_policy_from_settings_object(new_run: NewRun) -> None:
    run = new_run(settings=pipeline.Settings(name_policy="strict"))
    with pytest.raises(ValueError, match="'nested/a b'"):
        run.log({"nested": {"a b": 1}})


def test_off_policy_is_silent(new_run: NewRun) -> None:
    run = new_run(settings={"name_policy": "off"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"bad name": 1, "2x": 2})
    data = finished(run)
    assert data.history[0]["bad name"] == 1
    assert data.history[0]["2x"] == 2


@pytest.mark.parametrize("policy", ["warn", "strict", "off"])
@pytest.mark.parametrize("key", ["_step", "_private", "_x/y"])
def test_underscore_keys_are_reserved_under_every_policy(
    new_run: NewRun, policy: str, key: str
) -> None:
    run = new_run(settings={"name_policy": policy})
    with pytest.raises(ValueError, match=f"'{key}'.*reserved"):
        run.log({"ok": 1, key: 2})
    with pytest.raises(ValueError, match="reserved"):
        run.log({"_nested": {"a": 1}})
    run.log({"ok": 2})
    data = finished(run)
    assert [r["ok"] for r in data.history] == [2]
    assert data.history[0]["_step"] == 0


def test_name_policy_from_the_environment(new_run: NewRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBUS_NAME_POLICY", "strict")
    run = new_run()
    with pytest.raises(ValueError, match="'a b'"):
        run.log({"a b": 1})


# -- context managers --------------------------------------------------------------------


def test_with_block_finishes_the_run(new_run: NewRun) -> None:
    with new_run() as run:
        run.log({"x": 1})
        assert not run.finished
    assert run.finished
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert data.metadata["exit_code"] == 0
    assert data.history[0]["x"] == 1
    assert pipeline.current_run() is None


def test_exception_in_with_block_fails_the_run_and_propagates(new_run: NewRun) -> None:
    run = new_run()

    def train() -> None:
        with run:
            run.log({"x": 1})
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        train()
    assert run.finished
    data = pipeline.read_run(run.dir)
    assert data.state == "failed"
    assert data.metadata["exit_code"] == 1
    assert data.history[0]["x"] == 1


# -- disabled mode --------------------------------------------------------------------------


def test_disabled_mode_validates_but_writes_nothing(runs_dir: Path) -> None:
    target = runs_dir / "never"
    run = pipeline.init(dir=target, mode="disabled", config={"a": 1})
    run.log({"x": 1})
    run.log({"x": 2}, step=5)
    with pytest.raises(TypeError, match="'bad'"):
        run.log({"bad": object()})
    with pytest.raises(ValueError, match="reserved"):
        run.log({"_x": 1})
    run.config["b"] = 2
    assert run.config["b"] == 2
    assert run.flush() is True
    run.finish()
    assert not target.exists()
    assert not run.dir.exists()
    with pytest.raises(pipeline.RunFinishedError):
        run.log({"x": 3})


def test_disabled_mode_from_the_environment(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNBUS_MODE", "disabled")
    run = pipeline.init(dir=runs_dir / "never")
    run.log({"x": 1})
    run.finish()
    assert not (runs_dir / "never").exists()


def test_runs_dir_from_the_environment(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBUS_DIR", os.fspath(runs_dir / "env"))
    run = pipeline.init()
    run.log({"x": math.pi})
    run.finish()
    assert run.dir.parent == runs_dir / "env"
    assert pipeline.read_run(run.dir).history[0]["x"] == math.pi
