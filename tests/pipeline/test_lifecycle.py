"""Process-level lifecycle: exit without finish, hung sinks at finish, sink plugins."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from child import run_python

import pipeline
from pipeline import events as ev
from pipeline.testing import MemorySink


def _python(code: str, runs: Path, *, extra_path: str = "") -> subprocess.CompletedProcess[str]:
    return run_python(code, str(runs), extra_path=extra_path)


def test_a_program_that_never_calls_finish_exits_and_its_run_is_finished(tmp_path: Path) -> None:
    done = _python(
        """
        import sys, pipeline
        run = pipeline.init(project="p", dir=sys.argv[1])
        for i in range(1000):
            run.log({"x": i}, commit=(i % 2 == 1))
        run.log({"open": 1}, commit=False)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    data = pipeline.read_run(tmp_path)
    assert data.state == "finished"
    assert data.metadata["exit_code"] == 0
    assert data.history[-1]["open"] == 1, "the open row is closed at exit, not lost"


def test_an_uncaught_exception_marks_the_run_failed(tmp_path: Path) -> None:
    done = _python(
        """
        import sys, pipeline
        run = pipeline.init(project="p", dir=sys.argv[1])
        run.log({"x": 1})
        raise SystemExit(pipeline.log({"y": 2}) or 1/0)
        """,
        tmp_path,
    )
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr
    data = pipeline.read_run(tmp_path)
    assert data.state == "failed"
    assert data.metadata["exit_code"] == 1
    assert [r.get("x", r.get("y")) for r in data.history] == [1, 2]


class _HangsOnClose(MemorySink):
    async def aclose(self) -> None:
        import anyio

        await anyio.sleep_forever()


def test_finish_returns_when_a_sink_misses_its_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hung = _HangsOnClose(name="hung")
    run = pipeline.init(
        project="p",
        dir=tmp_path,
        sinks=[hung],
        settings={"quiet": True, "sink_timeout": 0.2},
    )
    for i in range(10):
        run.log({"x": i})
    run.finish()  # would never return if the deadline were not enforced
    assert [r["x"] for r in hung.rows] == list(range(10))
    assert len(pipeline.read_run(run.dir).history) == 10
    assert any("hung" in r.getMessage() and "close" in r.getMessage() for r in caplog.records)


def test_a_sink_plugin_is_found_through_its_entry_point(tmp_path: Path) -> None:
    # A real installed distribution on sys.path, as pip would leave it.
    pkg = tmp_path / "site"
    (pkg / "runbus_demo_sink").mkdir(parents=True)
    (pkg / "runbus_demo_sink" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import json
            from pathlib import Path

            class CountingSink:
                name = "counting"
                def __init__(self, run):
                    self.path = Path(run.dir) / "counted.json"
                    self.rows = 0
                async def open(self, run): pass
                async def write(self, batch):
                    self.rows += sum(1 for e in batch if e.kind == "row")
                async def flush(self): self.path.write_text(json.dumps(self.rows))
                async def aclose(self): await self.flush()
            """
        )
    )
    dist = pkg / "runbus_demo_sink-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: runbus-demo-sink\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[runbus.sinks]\ncounting = runbus_demo_sink:CountingSink\n"
    )
    done = _python(
        """
        import sys, pipeline
        run = pipeline.init(project="p", dir=sys.argv[1], settings={"sinks": ["counting"]})
        for i in range(42):
            run.log({"x": i})
        run.finish()
        print(run.dir)
        """,
        tmp_path / "runs",
        extra_path=str(pkg),
    )
    assert done.returncode == 0, done.stderr
    run_dir = Path(done.stdout.strip())
    assert (run_dir / "counted.json").read_text() == "42"


def test_an_unknown_sink_plugin_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'nosuch'.*runbus\.sinks"):
        pipeline.init(project="p", dir=tmp_path, settings={"sinks": ["nosuch"], "quiet": True})


def test_stored_events_reach_sinks_as_immutable_records(tmp_path: Path) -> None:
    mem = MemorySink()
    run = pipeline.init(project="p", dir=tmp_path, sinks=[mem], settings={"quiet": True})
    run.log({"x": 1})
    run.finish()
    kinds: Sequence[str] = [e.kind for e in mem.events]
    assert kinds[0] == "metadata"
    assert "row" in kinds
    assert kinds[-2:] == ["metadata", "finish"]
    row = next(e for e in mem.events if isinstance(e, ev.HistoryRow))
    with pytest.raises(AttributeError):
        row.step = 5  # type: ignore[misc]
    assert all(e.run_id == run.id for e in mem.events)


def test_settings_choose_where_the_pipeline_runs(tmp_path: Path) -> None:
    import asyncio

    async def main() -> tuple[str, str]:
        threaded = pipeline.init(
            project="p", dir=tmp_path, settings={"quiet": True, "pipeline": "thread"}
        )
        threaded.log({"x": 1})
        threaded.finish()  # a sync finish is fine: the pipeline has its own thread
        on_loop = pipeline.init(project="p", dir=tmp_path, settings={"quiet": True})
        on_loop.log({"x": 1})
        with pytest.raises(RuntimeError, match="afinish"):
            on_loop.finish()
        await on_loop.afinish()
        return pipeline.read_run(threaded.dir).state, pipeline.read_run(on_loop.dir).state

    assert asyncio.run(main()) == ("finished", "finished")
    with pytest.raises(ValueError, match="running asyncio event loop"):
        pipeline.init(project="p", dir=tmp_path, settings={"quiet": True, "pipeline": "loop"})


def test_sys_exit_codes_reach_runs_finished_at_exit(tmp_path: Path) -> None:
    done = _python(
        """
        import sys, pipeline
        run = pipeline.init(project="p", dir=sys.argv[1])
        run.log({"x": 1})
        sys.exit(3)
        """,
        tmp_path,
    )
    assert done.returncode == 3
    data = pipeline.read_run(tmp_path)
    assert data.state == "failed"
    assert data.metadata["exit_code"] == 3


def test_final_metadata_reports_each_sink_after_its_last_write(tmp_path: Path) -> None:
    run = pipeline.init(project="p", dir=tmp_path, settings={"quiet": True})
    run.log({"x": 1})
    run.finish()
    sinks = pipeline.read_run(run.dir).metadata["sinks"]
    assert sinks["disk"]["state"] == "running"
    assert sinks["disk"]["written"] >= 2  # start metadata and the row at least
    assert sinks["disk"]["dropped"] == 0


def test_a_placement_error_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="running asyncio event loop"):
        pipeline.init(project="p", dir=tmp_path, settings={"quiet": True, "pipeline": "loop"})
    assert list(tmp_path.iterdir()) == []
    assert pipeline.current_run() is None


def test_a_forked_child_gets_a_clear_error_and_the_parent_run_is_unharmed(
    tmp_path: Path,
) -> None:
    run = pipeline.init(project="p", dir=tmp_path, settings={"quiet": True})
    run.log({"x": 1})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what log() did, then leave without cleanup
        try:
            run.log({"x": 2})
            message = "no error"
        except pipeline.RunFinishedError as exc:
            message = str(exc)
        os.write(write_end, message.encode())
        os._exit(0 if pipeline.current_run() is None else 1)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    message = os.read(read_end, 4096).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "forked" in message
    assert "pipeline.init() in the child" in message
    run.log({"x": 3})
    run.finish()
    assert [r["x"] for r in pipeline.read_run(run.dir).history] == [1, 3]


def test_the_flush_timer_makes_logged_rows_durable_without_flush(tmp_path: Path) -> None:
    # A live run is only watchable (tail, `runbus show`, the online uploader that
    # reads events.log) if the timer flushes the disk sink on its own.
    import time

    run = pipeline.init(project="p", dir=tmp_path, settings={"quiet": True, "flush_interval": 0.1})
    try:
        for i in range(5):
            run.log({"x": i})
        # 100 timer periods: without the timer's flush, rows stay buffered far longer.
        deadline = time.monotonic() + 10
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            rows = pipeline.read_run(run.dir).history
            if len(rows) >= 5:
                break
            time.sleep(0.05)
        assert [r["x"] for r in rows] == [0, 1, 2, 3, 4]
        assert pipeline.read_run(run.dir).state == "running"
    finally:
        run.finish()
