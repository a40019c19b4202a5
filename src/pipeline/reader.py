"""Reading a run directory back: ``pipeline.read_run``.

The event log is the source of truth: history, config, metadata and summary
are rebuilt from it by replaying the same deterministic stages the live run
used, so a crashed run reads back as consistently as a finished one. Reading
never raises on a torn tail; damaged records are skipped and counted.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import events as ev
from pipeline.eventlog import ReadResult, read_events
from pipeline.steps import StepMerger, sequencer
from pipeline.summary import SummaryStage
from sinks.disk import output_text

EVENTS_FILE = "events.log"
#: Metadata a finished segment wrote that a resumed (running) run no longer has.
_END_KEYS = ("end_ts", "end_time", "exit_code", "duration")


@dataclass(frozen=True)
class RunData:
    """Everything in one run directory, as :func:`read_run` found it."""

    path: Path
    id: str
    name: str
    project: str
    #: ``running``, ``finished``, ``failed`` (non-zero exit code) or ``crashed``.
    state: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metadata: dict[str, Any]
    #: Rows in step order, each with ``_step``, ``_timestamp``, ``_runtime``.
    history: list[dict[str, Any]]
    #: System metric samples, each with ``_timestamp`` and ``_runtime``.
    system: list[dict[str, Any]]
    #: Console output (``output.log``).
    output: str
    #: Files in the run directory, relative to it.
    files: list[str]
    #: Log calls refused by the step rules (kept in the event log).
    refused: int
    #: Damaged event-log records skipped.
    corrupt: int
    #: Bytes of a torn tail ignored (a write cut short by a crash).
    torn_bytes: int
    #: ``define_metric`` definitions by name.
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The refused log calls themselves.
    refused_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start_ts(self) -> float | None:
        """Start time, epoch seconds."""
        value = self.metadata.get("start_ts")
        return float(value) if isinstance(value, int | float) else None

    @property
    def duration(self) -> float | None:
        """Seconds from start to the end (or to the last event, if it never finished)."""
        start = self.start_ts
        end = self.metadata.get("end_ts")
        if start is None:
            return None
        if isinstance(end, int | float):
            return float(end) - start
        if self.history:
            return float(self.history[-1]["_timestamp"]) - start
        return None


class Replay:
    """The state a sequence of stored events adds up to."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.metadata: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.rows: dict[int, ev.HistoryRow | ev.PartialRow] = {}
        self.refused: list[ev.Refused] = []
        self.stats: list[ev.Stats] = []
        self.output: list[str] = []
        self.metrics: list[ev.MetricDef] = []
        self.summary_sets: list[ev.SummaryUpdate] = []
        self.files: list[ev.FileSaved] = []
        self.order: list[ev.Event] = []  # what the summary replays, in order
        self.last_seq = 0
        self.finished = False
        self.exit_code: int | None = None
        #: Steps of rows an earlier segment left open (it crashed, then the run was
        #: resumed): never committed, but final, so they count like committed rows.
        self.frozen: set[int] = set()

    def feed(self, events: list[ev.Event]) -> None:
        """Fold stored events into the state."""
        for e in events:
            if e.seq > self.last_seq:
                self.last_seq = e.seq
            kind = e.kind
            if type(e) is ev.HistoryRow:
                self.rows[e.step] = e
                self.order.append(e)
            elif type(e) is ev.PartialRow:
                held = self.rows.get(e.step)
                if held is None or held.kind == "partial":
                    self.rows[e.step] = e
            elif kind == "metadata":
                if e.values.get("state") == "running":  # type: ignore[union-attr]
                    # The run (re)starts: a previous segment's end no longer holds.
                    self.finished = False
                    self.exit_code = None
                    for stale in _END_KEYS:
                        self.metadata.pop(stale, None)
                    self.frozen.update(s for s, r in self.rows.items() if r.kind == "partial")
                self.metadata.update(e.values)  # type: ignore[union-attr]
            elif kind == "config":
                self.config.update(e.values)  # type: ignore[union-attr]
            elif kind == "metric":
                self.metrics.append(e)  # type: ignore[arg-type]
                self.order.append(e)
            elif kind == "summary_set":
                self.summary_sets.append(e)  # type: ignore[arg-type]
                self.order.append(e)
            elif kind == "refused":
                self.refused.append(e)  # type: ignore[arg-type]
            elif kind == "stats":
                self.stats.append(e)  # type: ignore[arg-type]
            elif type(e) is ev.Output:
                self.output.append(output_text(e))
            elif kind == "file":
                self.files.append(e)  # type: ignore[arg-type]
            elif kind == "finish":
                self.finished = True
                self.exit_code = e.exit_code  # type: ignore[union-attr]

    def summary(self, *, open_rows: bool = True) -> SummaryStage:
        """A summary stage that has seen every row, definition and override."""
        stage = SummaryStage(self.run_id, sequencer())
        self.restore_summary(stage, open_rows=open_rows)
        return stage

    def restore_summary(self, stage: SummaryStage, *, open_rows: bool = True) -> None:
        """Replay into ``stage`` (the live run's, when resuming).

        ``open_rows``: count a row that was flushed but never committed. A live
        run has not counted it yet; for a crashed run it is all there is of that
        step. Rows a crashed segment left open always count (:attr:`frozen`).
        """
        final = set()
        for e in self.order:
            if e.kind == "row":
                stage.add_row(e.data, e.ts)  # type: ignore[union-attr]
                final.add(e.step)  # type: ignore[union-attr]
            elif e.kind == "metric":
                stage.define(e)  # type: ignore[arg-type]
            elif e.kind == "summary_set":
                stage.override(e.values, e.deleted)  # type: ignore[union-attr]
        for step in sorted(self.rows):
            row = self.rows[step]
            if row.kind == "partial" and step not in final and (open_rows or step in self.frozen):
                stage.add_row(row.data, row.ts)

    def restore_steps(self, merger: StepMerger) -> int:
        """Replay definitions into ``merger``; the step a resumed run continues at."""
        for m in self.metrics:
            merger._define(m)
        sync = merger._step_metrics
        if sync:
            for step in sorted(self.rows):
                data = self.rows[step].data
                for sm in sync:
                    if sm in data:
                        merger._step_values[sm] = data[sm]
        merger.rows = sum(1 for r in self.rows.values() if r.kind == "row")
        merger.refused = len(self.refused)
        merger._reported_refused = merger.refused
        next_step = self.metadata.get("next_step")
        top = max(self.rows) + 1 if self.rows else 0
        return max(top, next_step if isinstance(next_step, int) else 0)

    def history(self) -> list[dict[str, Any]]:
        """Rows in step order, with ``_step``, ``_timestamp`` and ``_runtime``."""
        out = []
        for step in sorted(self.rows):
            r = self.rows[step]
            row = {"_step": step, "_timestamp": r.ts, "_runtime": r.runtime}
            row.update(r.data)
            out.append(row)
        return out


def read_log(path: Path) -> ReadResult:
    """Parse a run directory's ``events.log``."""
    return read_events((path / EVENTS_FILE).read_bytes(), run_id_of(path))


def run_id_of(path: Path) -> str:
    """The run id in a ``run-<YYYYmmdd_HHMMSS>-<id>`` directory name ("" if not one)."""
    parts = path.name.split("-", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "run" else ""


def is_run_dir(path: Path) -> bool:
    """A run directory, or a runs directory with a ``latest-run`` link to one."""
    return (path / EVENTS_FILE).is_file() or (path / "latest-run" / EVENTS_FILE).is_file()


def list_run_dirs(root: Path) -> list[Path]:
    """``run-*`` directories under ``root``, newest first (their names start with the time)."""
    return sorted((p for p in root.glob("run-*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def resolve_run_dir(path: str | os.PathLike[str]) -> Path:
    """The run directory ``path`` names (a run directory, or a runs directory's latest run)."""
    p = Path(path)
    if (p / EVENTS_FILE).is_file():
        return p
    if (p / "latest-run" / EVENTS_FILE).is_file():
        return (p / "latest-run").resolve()
    if not p.exists():
        raise FileNotFoundError(f"no run directory at {p}")
    raise ValueError(
        f"{p} is not a runbus run directory (it has no {EVENTS_FILE}); "
        f"give a run-<date>-<id> directory, or a runs directory with a latest-run link"
    )


def read_run(path: str | os.PathLike[str]) -> RunData:
    """Read any run directory (finished, crashed or still being written).

    Raises ``FileNotFoundError``/``ValueError`` when ``path`` is not a run
    directory; never raises for damage inside the event log.
    """
    run_dir = resolve_run_dir(path)
    found = read_log(run_dir)
    run_id = run_id_of(run_dir)
    replay = Replay(run_id)
    replay.feed(found.events)
    meta = replay.metadata
    run_id = str(meta.get("id", run_id))
    state = _state(replay)
    meta = dict(meta)
    meta["state"] = state
    output_path = run_dir / "output.log"
    output = (
        output_path.read_text("utf-8", errors="replace")
        if output_path.is_file()
        else "".join(replay.output)
    )
    files = sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    return RunData(
        path=run_dir,
        id=run_id,
        name=str(meta.get("name", run_id)),
        project=str(meta.get("project", "")),
        state=state,
        config=dict(replay.config),
        # A live run's summary counts an open row only once it is committed.
        summary=replay.summary(open_rows=state != "running").snapshot(),
        metadata=meta,
        history=_with_local_paths(replay.history(), run_dir) if replay.files else replay.history(),
        system=[{"_timestamp": s.ts, "_runtime": s.runtime, **s.values} for s in replay.stats],
        output=output,
        files=files,
        refused=len(replay.refused),
        corrupt=found.corrupt,
        torn_bytes=found.torn_bytes,
        metrics={
            m.name: {
                "step_metric": m.step_metric,
                "step_sync": m.step_sync,
                "summary": list(m.summary) if m.summary is not None else None,
                "goal": m.goal,
                "hidden": m.hidden,
            }
            for m in replay.metrics
        },
        refused_calls=[
            {"step": r.step, "current_step": r.current_step, "data": r.data, "reason": r.reason}
            for r in replay.refused
        ],
    )


def _with_local_paths(rows: list[dict[str, Any]], run_dir: Path) -> list[dict[str, Any]]:
    """Media references gain ``local_path``: where their file is on this machine."""
    for row in rows:
        for value in row.values():
            if type(value) is dict and "_type" in value:
                _resolve(value, run_dir)
    return rows


def _resolve(ref: dict[str, Any], run_dir: Path) -> None:
    path = ref.get("path")
    if isinstance(path, str):
        ref["local_path"] = str(run_dir / path)
    for item in ref.get("items", ()) if isinstance(ref.get("items"), list) else ():
        if type(item) is dict:
            _resolve(item, run_dir)
    table = ref.get("table")  # a plot's table
    if type(table) is dict:
        _resolve(table, run_dir)


def _state(replay: Replay) -> str:
    if replay.finished:
        return "finished" if not replay.exit_code else "failed"
    return "running" if _alive(replay.metadata) else "crashed"


def _alive(meta: dict[str, Any]) -> bool:
    """Whether the process that wrote the run is still running (same host only)."""
    pid = meta.get("pid")
    if not isinstance(pid, int) or meta.get("host") != socket.gethostname():
        return False
    if pid == os.getpid():
        from pipeline.run import live_runs

        return any(r.id == meta.get("id") for r in live_runs())
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        start = meta.get("start_ts")
        # A reused pid belongs to a process started after the run began.
        return not (isinstance(start, int | float) and proc.create_time() > start + 1)
    except Exception:
        return False
