"""Every event kind that flows over the runbus bus.

Events are small immutable records (named tuples: cheap to build on the hot
path, immutable, and unpackable). Each carries the run id, a per-run sequence
number and a timestamp (epoch seconds). Input events (``LogCall``) are numbered
in the order the run handed them over; every event the stages emit, which is
what sinks see and the event log stores, is numbered from 1 upwards without
gaps, so a consumer can resume after the last sequence number it holds.

Control records (``Flush``, ``Barrier``) travel the same queues to keep their
order with the data around them, but are never stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

# A value that can live in a history row once normalised: JSON scalars, lists of
# them, and (for media, later) small reference dicts.
Scalar: TypeAlias = int | float | bool | str | None
Value: TypeAlias = Any
Row: TypeAlias = dict[str, Any]


class LogCall(NamedTuple):
    """One ``run.log()`` call, validated and copied at the call site."""

    run_id: str
    seq: int
    ts: float
    data: dict[str, Any]
    step: int | None
    commit: bool | None
    nonfinite: bool  # some float in ``data`` is NaN or infinite
    media: int  # bytes of media copies in ``data`` (+1), to encode off the caller's thread; 0: none
    kind: str = "log"


class HistoryRow(NamedTuple):
    """A committed history row: every key logged to ``step``."""

    run_id: str
    seq: int
    ts: float
    step: int
    runtime: float
    data: dict[str, Any]
    nonfinite: bool
    kind: str = "row"


class PartialRow(NamedTuple):
    """The open row's contents so far, written at a flush so it survives a crash.

    A later ``HistoryRow`` with the same step supersedes it.
    """

    run_id: str
    seq: int
    ts: float
    step: int
    runtime: float
    data: dict[str, Any]
    nonfinite: bool
    kind: str = "partial"


class Refused(NamedTuple):
    """A log call the step rules refused (a step lower than the current one)."""

    run_id: str
    seq: int
    ts: float
    step: int
    current_step: int
    data: dict[str, Any]
    reason: str
    kind: str = "refused"


class Summary(NamedTuple):
    """A snapshot of the whole run summary (emitted at flushes and at finish)."""

    run_id: str
    seq: int
    ts: float
    values: dict[str, Any]
    kind: str = "summary"


class SummaryUpdate(NamedTuple):
    """``run.summary[key] = value`` (``deleted`` lists keys removed with ``del``)."""

    run_id: str
    seq: int
    ts: float
    values: dict[str, Any]
    deleted: tuple[str, ...]
    kind: str = "summary_set"


class ConfigUpdate(NamedTuple):
    """Top-level config keys set or replaced."""

    run_id: str
    seq: int
    ts: float
    values: dict[str, Any]
    kind: str = "config"


class MetricDef(NamedTuple):
    """``run.define_metric(...)``."""

    run_id: str
    seq: int
    ts: float
    name: str
    step_metric: str | None
    step_sync: bool
    hidden: bool
    summary: tuple[str, ...] | None  # None: the default ("last")
    goal: str | None
    kind: str = "metric"


class Stats(NamedTuple):
    """One system-metrics sample, on its own timeline beside the history."""

    run_id: str
    seq: int
    ts: float
    runtime: float
    values: dict[str, Any]
    kind: str = "stats"


class Output(NamedTuple):
    """A chunk of console output (``stream`` is ``stdout`` or ``stderr``)."""

    run_id: str
    seq: int
    ts: float
    stream: str
    text: str
    kind: str = "output"


class FileSaved(NamedTuple):
    """A file stored in the run directory (path relative to it)."""

    run_id: str
    seq: int
    ts: float
    path: str
    sha256: str
    size: int
    kind: str = "file"


class Metadata(NamedTuple):
    """Keys merged into the run's metadata (identity, host, counters, state)."""

    run_id: str
    seq: int
    ts: float
    values: dict[str, Any]
    kind: str = "metadata"


class Finish(NamedTuple):
    """The run ended; the last event of a run (or of one resumed segment)."""

    run_id: str
    seq: int
    ts: float
    exit_code: int
    kind: str = "finish"


Event: TypeAlias = (
    LogCall
    | HistoryRow
    | PartialRow
    | Refused
    | Summary
    | SummaryUpdate
    | ConfigUpdate
    | MetricDef
    | Stats
    | Output
    | FileSaved
    | Metadata
    | Finish
)

#: Event kinds that sinks receive and the event log stores.
STORED_KINDS = frozenset(
    {
        "row",
        "partial",
        "refused",
        "summary",
        "summary_set",
        "config",
        "metric",
        "stats",
        "output",
        "file",
        "metadata",
        "finish",
    }
)


class Completion:
    """Counts down as each participant finishes; wakes sync and async waiters.

    Thread-safe: sink runners complete it from the pipeline's loop while the
    caller waits from its own thread (``wait``) or its own loop (``callback``).
    """

    __slots__ = ("_callbacks", "_event", "_lock", "_remaining", "ok", "result")

    def __init__(self) -> None:
        #: Whatever the completing side wants to hand back (a summary snapshot).
        self.result: Any = None
        #: False once any participant reported that it could not do its part.
        self.ok = True
        self._remaining = 1
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    def expect(self, n: int) -> None:
        """Add ``n`` participants that must each call :meth:`done`."""
        with self._lock:
            self._remaining += n

    def done(self, ok: bool = True) -> None:
        """One participant has finished (``ok=False``: it could not do its part)."""
        with self._lock:
            if not ok:
                self.ok = False
            self._remaining -= 1
            fire = self._remaining == 0
            callbacks = list(self._callbacks) if fire else []
        if fire:
            self._event.set()
            for cb in callbacks:
                cb()

    def add_callback(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` (from whichever thread completes) once all are done."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(cb)
                return
        cb()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done; False if ``timeout`` passed first."""
        return self._event.wait(timeout)

    @property
    def is_done(self) -> bool:
        """Whether every participant has finished."""
        return self._event.is_set()


class Flush(NamedTuple):
    """Control: write out everything before this point and make it durable.

    ``periodic`` flushes come from the bus's timer; others from ``run.flush()``.
    The stage task calls ``completion.expect`` once per live sink runner, and
    each runner calls ``completion.done`` once its sink has flushed.
    """

    completion: Completion | None
    periodic: bool
    kind: str = "flush"


class Barrier(NamedTuple):
    """Control: completed once the stages have processed everything before it."""

    completion: Completion
    kind: str = "barrier"


class Stop(NamedTuple):
    """Control: the run is finishing; close the open row and end the stream."""

    exit_code: int
    kind: str = "stop"


Control: TypeAlias = Flush | Barrier | Stop
Item: TypeAlias = Event | Control
