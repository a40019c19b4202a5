"""The terminal sink: a line when the run starts, a summary table when it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from pipeline.events import (
    Event,
    Finish,
    HistoryRow,
    MetricDef,
    Refused,
    Summary,
    SummaryUpdate,
)
from pipeline.render import SeriesSketch, format_duration, is_number, summary_table
from pipeline.runinfo import RunInfo
from sinks.base import SinkClosedError


def _settings_quiet(settings: Any) -> bool:
    """``settings.quiet`` whether settings is an object, a mapping or None."""
    if settings is None:
        return False
    if isinstance(settings, Mapping):
        return bool(settings.get("quiet", False))
    return bool(getattr(settings, "quiet", False))


class StdoutSink:
    """Prints where the run is written and, at the end, what it logged.

    At ``open``: ``runbus: run <name> (<id>) -> <dir>`` (with ``resumed`` when
    the run is a resumed one). At the ``finish`` event, or at ``aclose`` if none
    came: a table of metric | summary value | sparkline of its history (sorted
    by name, at most ``max_rows`` rows) and
    ``runbus: run <name> finished (exit code N) in <duration>; <dir>``.

    With ``quiet=True`` the sink prints nothing at all. It never reports errors
    itself: warnings come from ``run.log`` and sink failures from the runner, so
    quiet only silences this sink's own lines. :meth:`from_run` goes further
    and returns no sink when ``settings.quiet`` is set.

    Memory stays bounded however long the run: one :class:`SeriesSketch` per
    numeric history key and the latest summary snapshot.

    ``stream`` defaults to ``sys.stdout`` as it is at ``open`` time (so test
    capture and later redirection apply).
    """

    name = "stdout"

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        max_rows: int = 40,
        width: int = 24,
    ) -> None:
        self._stream_arg = stream
        self._stream: TextIO | None = None
        self.quiet = quiet
        self.max_rows = max_rows
        self.width = width
        self._run: RunInfo | None = None
        self._series: dict[str, SeriesSketch] = {}
        self._summary: dict[str, Any] = {}
        self._hidden_exact: set[str] = set()
        self._hidden_prefixes: list[str] = []
        self._refused = 0
        self._ended = False
        self._closed = False

    @classmethod
    def from_run(cls, run: RunInfo) -> StdoutSink | None:
        """The ``runbus.sinks`` entry point: no sink when ``run.settings.quiet``."""
        if _settings_quiet(run.settings):
            return None
        return cls()

    # -- Sink protocol -------------------------------------------------------

    async def open(self, run: RunInfo) -> None:
        """Print the run's name, id and directory."""
        self._run = run
        stream = self._stream_arg if self._stream_arg is not None else sys.stdout
        # Under console capture sys.stdout is runbus's tee: runbus's own lines go
        # straight to the terminal, not into the run's output.log.
        self._stream = getattr(stream, "runbus_passthrough", stream)
        resumed = " resumed" if run.resumed else ""
        self._print(f"runbus: run {run.name} ({run.id}){resumed} -> {run.dir}")

    async def write(self, batch: Sequence[Event]) -> None:
        """Track history and summary; print the end of run at ``finish``.

        Raises:
            SinkClosedError: after :meth:`aclose`.
        """
        if self._closed:
            raise SinkClosedError("StdoutSink.write after aclose; open a new sink for a new run")
        for e in batch:
            if isinstance(e, HistoryRow):
                self._add_row(e.data)
            elif isinstance(e, Summary):
                self._summary = dict(e.values)
            elif isinstance(e, SummaryUpdate):
                self._summary.update(e.values)
                for k in e.deleted:
                    self._summary.pop(k, None)
            elif isinstance(e, MetricDef):
                if e.hidden:
                    self._hide(e.name)
            elif isinstance(e, Refused):
                self._refused += 1
            elif isinstance(e, Finish):
                self._end(e.exit_code, e.ts)
            # Partial rows are superseded by the full row of the same step, and
            # every other kind has nothing to show: ignored.

    async def flush(self) -> None:
        """Flush the stream.

        Raises:
            SinkClosedError: after :meth:`aclose`.
        """
        if self._closed:
            raise SinkClosedError("StdoutSink.flush after aclose")
        if self._stream is not None and not self.quiet:
            self._stream.flush()

    async def aclose(self) -> None:
        """Print the end of run if no ``finish`` event came; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if not self._ended and self._run is not None:
            self._end(None, time.time())
        if self._stream is not None and not self.quiet:
            self._stream.flush()

    # -- internals -----------------------------------------------------------

    def _add_row(self, data: Mapping[str, Any]) -> None:
        series = self._series
        for k, v in data.items():
            if not is_number(v) or k.startswith("_"):
                continue
            sketch = series.get(k)
            if sketch is None:
                sketch = series[k] = SeriesSketch(self.width)
            try:
                sketch.add(float(v))
            except OverflowError:  # an int beyond float range: off the chart
                sketch.add(float("inf") if v > 0 else float("-inf"))

    def _hide(self, name: str) -> None:
        if name.endswith("*"):
            self._hidden_prefixes.append(name[:-1])
        else:
            self._hidden_exact.add(name)

    def _visible(self, key: str) -> bool:
        return key not in self._hidden_exact and not any(
            key.startswith(p) for p in self._hidden_prefixes
        )

    def _end(self, exit_code: int | None, ts: float) -> None:
        self._ended = True
        run = self._run
        if run is None or self.quiet:
            return
        summary = {k: v for k, v in self._summary.items() if self._visible(k)}
        series = {k: s.values() for k, s in self._series.items() if self._visible(k)}
        body = summary_table(summary, series, max_rows=self.max_rows, width=self.width)
        lines = []
        if body:
            lines.append(f"runbus: summary of {run.name}")
            lines.extend("  " + line for line in body.splitlines())
        if self._refused:
            lines.append(
                f"runbus: {self._refused} log call(s) refused (step lower than the current"
                " one); they are kept in the event log"
            )
        took = format_duration(ts - run.start_ts)
        if exit_code is None:
            lines.append(f"runbus: run {run.name} ended without finishing in {took}; {run.dir}")
        else:
            lines.append(
                f"runbus: run {run.name} finished (exit code {exit_code}) in {took}; {run.dir}"
            )
        self._print("\n".join(lines))

    def _print(self, text: str) -> None:
        if self.quiet or self._stream is None:
            return
        # A plain blocking write: a few hundred bytes at the start and end of a
        # run, where a thread hop would cost more than the write.
        self._stream.write(text + "\n")
