"""Resuming a run by id: after a clean finish and after a crash."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline import jsoncodec

NewRun = Callable[..., pipeline.Run]

SRC = str(Path(__file__).resolve().parents[2] / "src")


def user_rows(data: pipeline.RunData) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ("_timestamp", "_runtime")} for r in data.history
    ]


def disk_summary(run: pipeline.Run) -> dict[str, Any]:
    return dict(jsoncodec.loads((run.dir / "summary.json").read_bytes()))


def first_segment(new_run: NewRun) -> pipeline.Run:
    run = new_run(id="abc123", config={"lr": 0.1, "layers": 2})
    run.define_metric("loss", summary="min,max")
    run.define_metric("val/*", summary="max", step_metric="epoch")
    run.log({"loss": 3.0, "epoch": 0})
    run.log({"loss": 1.0, "val/acc": 0.5})
    run.log({"loss": 2.0, "plain": "a"}, step=5)
    run.summary["note"] = "set by hand"
    run.finish()
    return run


def test_resume_continues_in_the_same_directory(new_run: NewRun, runs_dir: Path) -> None:
    first = first_segment(new_run)
    run = new_run(id="abc123", resume="allow")
    assert run.dir == first.dir
    assert run.name == first.name
    assert [p.name for p in runs_dir.iterdir() if p.name.startswith("run-")] == [first.dir.name]
    run.log({"loss": 0.5})
    run.log({"val/acc": 0.9})
    run.finish()
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert data.metadata["resumed"] == 1
    assert user_rows(data) == [
        {"_step": 0, "loss": 3.0, "epoch": 0},
        {"_step": 1, "loss": 1.0, "val/acc": 0.5, "epoch": 0},
        {"_step": 5, "loss": 2.0, "plain": "a"},
        # Steps continue after the last one; step_sync carries the epoch over.
        {"_step": 6, "loss": 0.5},
        {"_step": 7, "val/acc": 0.9, "epoch": 0},
    ]


def test_resume_carries_config_and_summary_over(new_run: NewRun) -> None:
    first_segment(new_run)
    run = new_run(id="abc123", resume="allow", config={"layers": 3, "extra": True})
    assert dict(run.config) == {"lr": 0.1, "layers": 3, "extra": True}
    assert run.summary["loss"] == {"min": 1.0, "max": 3.0}
    assert run.summary["note"] == "set by hand"
    # Definitions from the first segment keep aggregating over both segments.
    run.log({"loss": 0.25, "val/acc": 0.4})
    run.log({"loss": 9.0, "val/acc": 0.3})
    assert run.summary["loss"] == {"min": 0.25, "max": 9.0}
    run.finish()
    data = pipeline.read_run(run.dir)
    assert data.config == {"lr": 0.1, "layers": 3, "extra": True}
    assert jsoncodec.loads((run.dir / "config.json").read_bytes()) == data.config
    assert data.summary == {
        "epoch": 0,
        "loss": {"min": 0.25, "max": 9.0},
        "note": "set by hand",
        "plain": "a",
        "val/acc": {"max": 0.5},
    }
    assert disk_summary(run) == data.summary
    assert set(data.metrics) == {"loss", "val/*"}


def test_resume_true_means_allow(new_run: NewRun) -> None:
    first_segment(new_run)
    run = new_run(id="abc123", resume=True)
    run.log({"x": 1})
    run.finish()
    assert pipeline.read_run(run.dir).history[-1]["_step"] == 6


def test_resume_allow_with_an_unknown_id_starts_a_new_run(new_run: NewRun) -> None:
    run = new_run(id="fresh1", resume="allow")
    run.log({"x": 1})
    run.finish()
    data = pipeline.read_run(run.dir)
    assert data.id == "fresh1"
    assert "resumed" not in data.metadata
    assert user_rows(data) == [{"_step": 0, "x": 1}]


def test_resume_twice_counts_both(new_run: NewRun) -> None:
    first_segment(new_run)
    for _ in range(2):
        run = new_run(id="abc123", resume="allow")
        run.log({"x": 1})
        run.finish()
    data = pipeline.read_run(run.dir)
    assert data.metadata["resumed"] == 2
    assert [r["_step"] for r in data.history][-2:] == [6, 7]


def test_refused_calls_are_counted_over_both_segments(new_run: NewRun) -> None:
    run = new_run(id="ref1")
    run.log({"a": 1}, step=5)
    with pytest.warns(pipeline.StepWarning):
        refuse(run, [1, 2])
    run.finish()
    run = new_run(id="ref1", resume="allow")
    with pytest.warns(pipeline.StepWarning, match=r"step=3\b.*current step 6"):
        refuse(run, [3])
    run.finish()
    data = pipeline.read_run(run.dir)
    assert data.refused == 3
    assert data.metadata["refused"] == 3
    assert [c["step"] for c in data.refused_calls] == [1, 2, 3]
    assert [r["_step"] for r in data.history] == [5]


def refuse(run: pipeline.Run, steps: list[int]) -> None:
    """Log at ``steps`` (all lower than the current step) and wait for the warnings."""
    for step in steps:
        run.log({"late": step}, step=step)
    run.flush()


def test_resume_must_with_an_unknown_id_raises(new_run: NewRun, runs_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"resume='must'.*'nosuch'"):
        new_run(id="nosuch", resume="must")
    assert list(runs_dir.iterdir()) == []


def test_resume_must_with_a_known_id_resumes(new_run: NewRun) -> None:
    first_segment(new_run)
    run = new_run(id="abc123", resume="must")
    run.finish()
    assert pipeline.read_run(run.dir).metadata["resumed"] == 1


@pytest.mark.parametrize("resume", [None, False, "never"])
def test_reusing_an_id_without_resume_raises(new_run: NewRun, resume: Any) -> None:
    first = first_segment(new_run)
    with pytest.raises(ValueError, match=r"'abc123' already exists.*resume='allow'"):
        new_run(id="abc123", resume=resume)
    data = pipeline.read_run(first.dir)
    assert data.state == "finished"
    assert "resumed" not in data.metadata


def test_resumed_run_is_running_until_finished(new_run: NewRun) -> None:
    first_segment(new_run)
    run = new_run(id="abc123", resume="allow")
    run.log({"x": 1})
    run.flush()
    data = pipeline.read_run(run.dir)
    assert data.state == "running"
    assert "exit_code" not in data.metadata
    run.finish(exit_code=2)
    data = pipeline.read_run(run.dir)
    assert data.state == "failed"
    assert data.metadata["exit_code"] == 2


# -- after a crash ----------------------------------------------------------------------------

_CHILD = """
    import sys, threading
    import pipeline

    run = pipeline.init(project="p", id="crash1", dir=sys.argv[1], config={"lr": 0.1})
    run.define_metric("loss", summary="min,mean")
    for i in range(5):
        run.log({"loss": 5.0 - i})
    run.summary["note"] = "kept"
    run.log({"open": 1}, commit=False)
    run.flush()
    print("flushed", flush=True)
    threading.Event().wait()
"""


def _crashed_run(runs_dir: Path) -> None:
    """Run ``_CHILD`` until it has flushed, then SIGKILL it."""
    env = dict(os.environ, PYTHONPATH=SRC, RUNBUS_QUIET="1")
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(runs_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(child.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=60)
        line = child.stdout.readline() if ready else ""
        assert line == "flushed\n", f"child did not flush: {line!r} {child.poll()}"
    finally:
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err


def test_resume_after_a_crash(runs_dir: Path) -> None:
    _crashed_run(runs_dir)
    crashed = pipeline.read_run(runs_dir)
    assert crashed.state == "crashed"
    assert crashed.id == "crash1"
    assert len(crashed.history) == 6  # five rows and the open one, flushed partial
    assert crashed.summary["loss"] == {"min": 1.0, "mean": 3.0}

    run = pipeline.init(dir=runs_dir, id="crash1", resume="allow")
    assert run.dir == crashed.path
    assert run.config["lr"] == 0.1
    assert run.summary["loss"] == {"min": 1.0, "mean": 3.0}
    assert run.summary["note"] == "kept"
    run.log({"loss": 0.0})
    run.flush()
    live = pipeline.read_run(run.dir)
    assert live.state == "running"
    assert live.summary == dict(run.summary) == disk_summary(run)

    run.finish()
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert data.metadata["resumed"] == 1
    assert user_rows(data) == [
        *({"_step": i, "loss": 5.0 - i} for i in range(5)),
        {"_step": 5, "open": 1},  # what the crash left open stays in its step
        {"_step": 6, "loss": 0.0},
    ]
    assert data.summary == {
        "loss": {"min": 0.0, "mean": 2.5},
        "note": "kept",
        "open": 1,
    }
    assert disk_summary(run) == data.summary
    assert data.config == {"lr": 0.1}
