"""Every built-in sink passes the sink contract in pipeline.testing.check_sink."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import pytest

from pipeline.runinfo import RunInfo
from pipeline.testing import FailingSink, MemorySink, check_sink
from sinks.base import Sink
from sinks.disk import DiskSink
from sinks.stdout import StdoutSink


def _disk(run: RunInfo) -> Sink:
    return DiskSink(run.dir)


def _stdout(run: RunInfo) -> Sink:
    return StdoutSink(stream=io.StringIO())


@pytest.mark.parametrize(
    "factory",
    [_disk, _stdout, lambda run: MemorySink()],
    ids=["disk", "stdout", "memory"],
)
def test_builtin_sinks_pass_compliance(factory: object, tmp_path: Path) -> None:
    anyio.run(check_sink, factory, tmp_path)


def test_compliance_catches_a_sink_that_accepts_writes_after_close(tmp_path: Path) -> None:
    class Sloppy(MemorySink):
        async def write(self, batch: object) -> None:  # type: ignore[override]
            pass  # never refuses

        async def flush(self) -> None:
            pass

    with pytest.raises(AssertionError, match="after aclose"):
        anyio.run(check_sink, lambda run: Sloppy(), tmp_path)


def test_compliance_reports_a_sink_that_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="injected"):
        anyio.run(check_sink, lambda run: FailingSink(("flush",)), tmp_path)


def test_disk_sink_compliance_leaves_a_readable_run(tmp_path: Path) -> None:
    import pipeline

    anyio.run(check_sink, _disk, tmp_path)
    data = pipeline.read_run(tmp_path / "run-20000101_000000-compliance")
    assert [r["_step"] for r in data.history] == [0, 1]
    assert data.history[1]["txt"] == "héllo ✓"
    assert data.refused == 1
    assert data.corrupt == 0
    assert data.system[0]["system/cpu"] == 12.5
