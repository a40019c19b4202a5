"""The disk sink: atomic JSON files, failed writes that corrupt nothing, bad directories."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

import pipeline
import sinks.disk
from pipeline import events as ev
from pipeline.eventlog import read_events
from pipeline.runinfo import RunInfo
from pipeline.testing import MemorySink, sample_events
from sinks.disk import DiskSink


def _info(path: Path) -> RunInfo:
    return RunInfo(id="disk", name="disk", project="p", dir=path, start_ts=0.0)


def test_json_files_are_current_after_flush_not_only_at_finish(tmp_path: Path) -> None:
    run = pipeline.init(project="p", dir=tmp_path, config={"lr": 0.1}, settings={"quiet": True})
    run.log({"loss": 0.5})
    run.config["batch"] = 64
    run.summary["best"] = 0.9
    assert run.flush(timeout=30)
    config = json.loads((run.dir / "config.json").read_text())
    summary = json.loads((run.dir / "summary.json").read_text())
    meta = json.loads((run.dir / "metadata.json").read_text())
    assert config == {"lr": 0.1, "batch": 64}
    assert summary == {"best": 0.9, "loss": 0.5}
    assert meta["state"] == "running"
    assert meta["id"] == run.id
    leftovers = [p.name for p in run.dir.iterdir() if p.name.endswith(".json.tmp")]
    assert leftovers == [], "temp files of the atomic rewrite are renamed away"
    run.finish()
    assert json.loads((run.dir / "metadata.json").read_text())["state"] == "finished"


def test_latest_run_points_at_the_newest_run(tmp_path: Path) -> None:
    first = pipeline.init(project="p", dir=tmp_path, settings={"quiet": True})
    first.finish()
    second = pipeline.init(project="p", dir=tmp_path, settings={"quiet": True})
    second.finish()
    link = tmp_path / "latest-run"
    assert link.is_symlink()
    assert os.readlink(link) == second.dir.name
    assert pipeline.read_run(tmp_path).id == second.id


def test_a_full_disk_rolls_back_the_frame_and_raises(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path / "run")

    async def go() -> None:
        await sink.open(_info(sink.dir))
        await sink.write(sample_events())
        await sink.flush()
        # /dev/full fails every write with ENOSPC, as a full disk does.
        assert sink._fd is not None
        os.dup2(os.open("/dev/full", os.O_WRONLY), sink._fd)
        await sink.write(sample_events())
        with pytest.raises(OSError, match="No space left") as info:
            await sink.flush()
        assert info.value.errno == errno.ENOSPC
        assert str(sink.dir / "events.log") in str(info.value)

    anyio.run(go)


def test_a_write_cut_short_is_truncated_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"intact")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    real_write = os.write

    def half_then_full(fd_: int, data: Any) -> int:
        if len(data) > 4:
            return real_write(fd_, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        sinks.disk._append(fd, b"0123456789abcdef", path)
    monkeypatch.undo()
    os.close(fd)
    assert path.read_bytes() == b"intact"


def test_disk_errors_mid_run_are_reported_once_and_other_sinks_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_append = sinks.disk._append
    calls = {"n": 0}

    def failing_append(fd: int, data: bytes, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, f"No space left on device (writing {path})", str(path))
        real_append(fd, data, path)

    monkeypatch.setattr(sinks.disk, "_append", failing_append)
    mem = MemorySink()
    with caplog.at_level(logging.WARNING, logger="runbus"):
        run = pipeline.init(
            project="p", dir=tmp_path, sinks=[mem], settings={"quiet": True, "max_retries": 2}
        )
        run.log({"x": 0})
        assert run.flush(timeout=30)
        for i in range(1, 100):
            run.log({"x": i})
        run.flush(timeout=30)
        run.finish()
    reports = [r.getMessage() for r in caplog.records if "'disk'" in r.getMessage()]
    assert len(reports) == 1
    assert "No space left" in reports[0]
    assert str(run.dir) in reports[0]
    assert [r["x"] for r in mem.rows] == list(range(100))
    monkeypatch.setattr(sinks.disk, "_append", real_append)
    data = pipeline.read_run(run.dir)
    assert [r["x"] for r in data.history] == [0], "what was flushed before the failure is intact"
    assert data.corrupt == 0
    assert data.torn_bytes == 0


def test_an_unwritable_run_directory_is_reported_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the runs directory should be")
    mem = MemorySink()
    with caplog.at_level(logging.WARNING, logger="runbus"):
        run = pipeline.init(
            project="p", dir=blocker / "runs", sinks=[mem], settings={"quiet": True}
        )
        for i in range(10):
            run.log({"x": i})
        run.finish()
    reports = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(reports) == 1, reports
    assert str(blocker / "runs") in reports[0]
    assert "RUNBUS_DIR" in reports[0]
    assert [r["x"] for r in mem.rows] == list(range(10))


def test_frames_hold_a_bounded_number_of_events(tmp_path: Path) -> None:
    run = pipeline.init(project="p", dir=tmp_path, settings={"quiet": True})
    for i in range(sinks.disk.FRAME_EVENTS * 3):
        run.log({"x": i})
    run.finish()
    found = read_events((run.dir / "events.log").read_bytes())
    assert found.frames >= 3
    rows = [e for e in found.events if isinstance(e, ev.HistoryRow)]
    assert len(rows) == sinks.disk.FRAME_EVENTS * 3


def test_compressed_frames_read_back(tmp_path: Path) -> None:
    run = pipeline.init(project="p", dir=tmp_path, settings={"quiet": True, "compress": True})
    values: list[Any] = [float(i) / 3 for i in range(2000)]
    for v in values:
        run.log({"v": v, "s": "text " * 5})
    run.finish()
    assert [r["v"] for r in pipeline.read_run(run.dir).history] == values
