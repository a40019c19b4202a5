"""The terminal sink, driven directly with events."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.events import (
    Event,
    Finish,
    HistoryRow,
    MetricDef,
    Output,
    PartialRow,
    Refused,
    Summary,
    SummaryUpdate,
)
from pipeline.render import BLOCKS
from pipeline.runinfo import RunInfo
from sinks.base import Sink, SinkClosedError
from sinks.stdout import StdoutSink

pytestmark = pytest.mark.anyio

RUN_ID = "abc123"


def make_run(tmp_path: Path, **kw: Any) -> RunInfo:
    fields: dict[str, Any] = {
        "id": RUN_ID,
        "name": "bright-fox-1",
        "project": "p",
        "dir": tmp_path / f"run-20240101_120000-{RUN_ID}",
        "start_ts": 1000.0,
    }
    fields.update(kw)
    return RunInfo(**fields)


class Seq:
    """Hands out sequence numbers so tests read like a run's event stream."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


def rows(seq: Seq, values: list[dict[str, Any]]) -> list[Event]:
    return [
        HistoryRow(RUN_ID, seq(), 1000.0 + i, i, float(i), data, False)
        for i, data in enumerate(values)
    ]


async def test_open_prints_run_name_id_and_dir(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink()
    run = make_run(tmp_path)
    await sink.open(run)
    out = capsys.readouterr().out
    assert out == f"runbus: run bright-fox-1 ({RUN_ID}) -> {run.dir}\n"
    await sink.aclose()


async def test_open_says_resumed(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink()
    await sink.open(make_run(tmp_path, resumed=True))
    assert "resumed" in capsys.readouterr().out
    await sink.aclose()


async def test_finish_prints_summary_table_and_final_line(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink()
    run = make_run(tmp_path)
    await sink.open(run)
    seq = Seq()
    losses = [1.0, 0.8, 0.5, 0.3, 0.2, 0.1]
    await sink.write(rows(seq, [{"loss": v, "acc": 1 - v, "note": "x"} for v in losses]))
    await sink.write(
        [
            Summary(RUN_ID, seq(), 1006.0, {"loss": 0.1, "acc": 0.9, "best": {"max": 0.97}}),
            Finish(RUN_ID, seq(), 1000.0 + 245, 0),
        ]
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[-1] == f"runbus: run bright-fox-1 finished (exit code 0) in 4m05s; {run.dir}"
    table = "\n".join(lines[:-1])
    loss = next(line for line in lines if line.strip().startswith("loss"))
    assert "0.1" in loss
    assert loss.rstrip().endswith("█▆▄▃▂▁")
    assert any(c in table for c in BLOCKS)
    assert "max=0.97" in table
    assert "note" not in table  # strings are not charted, and not in the summary
    # Sorted by metric name.
    order = [line.split()[0] for line in lines if line.startswith("  ") and "─" not in line]
    assert order == ["metric", "acc", "best", "loss"]
    # Nothing more at close.
    await sink.aclose()
    assert capsys.readouterr().out == ""


async def test_aclose_without_finish_still_reports(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink()
    await sink.open(make_run(tmp_path))
    await sink.write(rows(Seq(), [{"loss": 1.0}, {"loss": 0.5}]))
    capsys.readouterr()
    await sink.aclose()
    out = capsys.readouterr().out
    assert "loss" in out
    assert "ended without finishing" in out.splitlines()[-1]


async def test_nonfinite_values_are_gaps_and_summary_reads_nan(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink()
    await sink.open(make_run(tmp_path))
    seq = Seq()
    await sink.write(rows(seq, [{"x": 0.0}, {"x": math.nan}, {"x": 1.0}, {"x": math.inf}]))
    await sink.write([Summary(RUN_ID, seq(), 0.0, {"x": math.inf}), Finish(RUN_ID, seq(), 1.0, 1)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("x "))
    assert "inf" in line
    assert line.endswith(f"{BLOCKS[0]} {BLOCKS[-1]}")  # trailing inf gap is stripped
    await sink.aclose()


async def test_summary_updates_and_hidden_metrics(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink()
    await sink.open(make_run(tmp_path))
    seq = Seq()
    await sink.write(
        [
            MetricDef(RUN_ID, seq(), 0.0, "debug/*", None, False, True, None, None),
            *rows(seq, [{"debug/grad": 1.0, "loss": 2.0}]),
            Summary(RUN_ID, seq(), 0.0, {"loss": 2.0, "old": 1}),
            SummaryUpdate(RUN_ID, seq(), 0.0, {"best": 0.5}, ("old",)),
            Finish(RUN_ID, seq(), 0.0, 0),
        ]
    )
    out = capsys.readouterr().out
    assert "best" in out
    assert "old" not in out
    assert "debug/grad" not in out
    await sink.aclose()


async def test_refused_calls_are_mentioned(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink()
    await sink.open(make_run(tmp_path))
    await sink.write([Refused(RUN_ID, 1, 0.0, 1, 5, {"a": 1}, "step 1 < current 5")])
    await sink.aclose()
    assert "1 log call(s) refused" in capsys.readouterr().out


async def test_partial_rows_and_unknown_kinds_are_ignored(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink()
    await sink.open(make_run(tmp_path))
    unknown = SimpleNamespace(kind="from-the-future", run_id=RUN_ID, seq=9, ts=0.0)
    await sink.write(
        [
            PartialRow(RUN_ID, 1, 0.0, 0, 0.0, {"partial_only": 1.0}, False),
            Output(RUN_ID, 2, 0.0, "stdout", "hello\n"),
            unknown,  # type: ignore[list-item]
        ]
    )
    await sink.aclose()
    out = capsys.readouterr().out
    assert "partial_only" not in out
    assert "hello" not in out


async def test_quiet_prints_nothing(tmp_path: Path, capsys: Any) -> None:
    sink = StdoutSink(quiet=True)
    await sink.open(make_run(tmp_path))
    await sink.write(rows(Seq(), [{"loss": 1.0}]))
    await sink.write([Finish(RUN_ID, 9, 1001.0, 0)])
    await sink.flush()
    await sink.aclose()
    assert capsys.readouterr().out == ""


async def test_row_cap_folds_the_rest(tmp_path: Path) -> None:
    stream = io.StringIO()
    sink = StdoutSink(stream, max_rows=5)
    await sink.open(make_run(tmp_path))
    await sink.write(rows(Seq(), [{f"m{i:02d}": float(i) for i in range(12)}]))
    await sink.aclose()
    out = stream.getvalue()
    assert "m04" in out
    assert "m05" not in out
    assert "... 7 more" in out


async def test_long_run_memory_is_bounded(tmp_path: Path) -> None:
    stream = io.StringIO()
    sink = StdoutSink(stream, width=10)
    await sink.open(make_run(tmp_path))
    seq = Seq()
    for start in range(0, 20_000, 1000):
        await sink.write(rows(seq, [{"loss": float(i)} for i in range(start, start + 1000)]))
    assert len(sink._series["loss"]) <= 2 * 10 + 1
    await sink.aclose()
    line = next(x for x in stream.getvalue().splitlines() if x.strip().startswith("loss"))
    assert line.endswith(BLOCKS[-1])


async def test_write_and_flush_after_aclose_raise(tmp_path: Path) -> None:
    sink = StdoutSink(io.StringIO())
    await sink.open(make_run(tmp_path))
    await sink.aclose()
    await sink.aclose()  # harmless
    with pytest.raises(SinkClosedError):
        await sink.write([])
    with pytest.raises(SinkClosedError):
        await sink.flush()


async def test_stream_is_resolved_at_open(tmp_path: Path, monkeypatch: Any) -> None:
    sink = StdoutSink()  # built before stdout is replaced, as a factory would
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    await sink.open(make_run(tmp_path))
    await sink.aclose()
    assert stream.getvalue().startswith("runbus: run bright-fox-1")


def test_is_a_sink() -> None:
    assert isinstance(StdoutSink(), Sink)
    assert StdoutSink.name == "stdout"


@pytest.mark.parametrize(
    ("settings", "expect_sink"),
    [
        (None, True),
        (SimpleNamespace(quiet=False), True),
        (SimpleNamespace(quiet=True), False),
        ({"quiet": True}, False),
        (SimpleNamespace(), True),
    ],
)
def test_from_run_follows_settings_quiet(
    tmp_path: Path, settings: object, expect_sink: bool
) -> None:
    sink = StdoutSink.from_run(make_run(tmp_path, settings=settings))
    assert (sink is not None) == expect_sink
    if sink is not None:
        assert isinstance(sink, StdoutSink)
