"""The sink runner isolates sinks: failures, slowness and drops never stall the run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import pipeline
from pipeline.testing import FailingSink, MemorySink, SlowSink


def _init(tmp_path: Path, *sinks: object, **settings: object) -> pipeline.Run:
    return pipeline.init(
        project="runner",
        dir=tmp_path,
        sinks=list(sinks),  # type: ignore[arg-type]
        settings={"quiet": True, **settings},
    )


def test_a_sink_that_always_fails_is_stopped_and_the_others_get_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = FailingSink(("write", "flush"))
    good = MemorySink()
    run = _init(tmp_path, bad, good, max_retries=2)
    with caplog.at_level(logging.WARNING, logger="runbus"):
        for i in range(500):
            run.log({"x": i})
        # Not everything reached every sink: flush says so.
        assert run.flush(timeout=30) is False
        run.finish()
    assert [r["x"] for r in good.rows] == list(range(500))
    assert len(pipeline.read_run(run.dir).history) == 500
    stopped = [r for r in caplog.records if "stopped" in r.getMessage()]
    assert len(stopped) == 1, "a failing sink is reported once"
    assert "'failing'" in stopped[0].getMessage()
    meta = pipeline.read_run(run.dir).metadata
    assert meta["sinks"]["failing"]["state"] == "failed"
    assert meta["sinks"]["failing"]["errors"] == 3  # the first try and max_retries=2 more
    assert meta["sinks"]["memory"]["state"] == "running"
    assert meta["sinks"]["memory"]["written"] >= 500
    assert meta["sinks"]["disk"]["state"] == "running"


def test_a_sink_that_fails_briefly_is_retried_and_loses_nothing(tmp_path: Path) -> None:
    flaky = FailingSink(("write",), times=2)
    run = _init(tmp_path, flaky, max_retries=2)
    assert run.flush(timeout=30), "recovered within its retries: the flush succeeded"
    for i in range(100):
        run.log({"x": i})
    run.finish()
    assert flaky.failures == 2
    assert [r["x"] for r in flaky.rows] == list(range(100))
    assert pipeline.read_run(run.dir).metadata["sinks"]["failing"]["dropped"] == 0


def test_a_sink_that_fails_to_open_does_not_block_the_run(tmp_path: Path) -> None:
    broken = FailingSink(("open",))
    run = _init(tmp_path, broken)
    for i in range(10):
        run.log({"x": i})
    assert run.flush(timeout=30) is False
    run.finish()
    assert broken.rows == []
    assert len(pipeline.read_run(run.dir).history) == 10


def test_drop_newest_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    # The gate holds every write until released: a stuck sink.
    stuck = SlowSink(delay=-1)
    spec = pipeline.SinkSpec(stuck, policy="drop_newest", queue_size=1)
    run = _init(tmp_path, spec)
    for i in range(20_000):
        run.log({"x": i})
    stuck.release()
    run.finish()
    data = pipeline.read_run(run.dir)
    assert len(data.history) == 20_000
    dropped = data.metadata["sinks"]["slow"]["dropped"]
    assert dropped > 0
    assert len(stuck.rows) < 20_000
    # Every row either reached the sink or was counted as dropped.
    assert len(stuck.rows) + dropped >= 20_000


def test_flush_waits_for_every_sink(tmp_path: Path) -> None:
    slow = SlowSink(delay=0.05)
    run = _init(tmp_path, slow)
    for i in range(50):
        run.log({"x": i})
    assert run.flush(timeout=30)
    assert [r["x"] for r in slow.rows] == list(range(50))
    assert slow.flushes >= 1
    run.finish()


def test_sinks_see_events_in_sequence_order_without_gaps(tmp_path: Path) -> None:
    mem = MemorySink()
    run = _init(tmp_path, mem)
    run.config.update({"a": 1})
    for i in range(1000):
        run.log({"x": i})
        if i % 100 == 0:
            run.summary["best"] = i
    run.finish()
    seqs = [e.seq for e in mem.events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert mem.events[-1].kind == "finish"


def test_sink_spec_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="drop_newest"):
        pipeline.SinkSpec(MemorySink(), policy="drop_oldest")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a runbus sink"):
        pipeline.SinkSpec(object())  # type: ignore[arg-type]


def test_errors_that_retrying_cannot_fix_stop_the_sink_at_once(tmp_path: Path) -> None:
    broken = FailingSink(("write",), exc=lambda: TypeError("bad event"))
    run = _init(tmp_path, broken, max_retries=5)
    run.log({"x": 1})
    run.finish()
    assert broken.failures == 1
    assert pipeline.read_run(run.dir).metadata["sinks"]["failing"]["state"] == "failed"


def test_a_step_warning_turned_into_an_error_does_not_stop_the_pipeline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import warnings

    run = _init(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"x": 1}, step=5)
        run.log({"x": 2}, step=1)  # refused
        assert run.flush(timeout=30)
        run.finish()
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert data.refused == 1
    assert any("refused" in r.getMessage() for r in caplog.records)
