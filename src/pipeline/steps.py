"""The step merger: turns log calls into history rows by W&B's step rules.

- Each call without ``step`` merges into the current row and commits it, unless
  ``commit=False``, which keeps the row open for more keys.
- ``step`` equal to the current step merges; greater closes the current row and
  opens that step, held until a later step, ``commit=True`` or finish.
- ``step`` lower than the current step is refused: a warning naming the step and
  keys, a count in the run's metadata, and a ``Refused`` event in the log.
- ``define_metric(step_metric=...)`` fills the step metric's latest value into
  rows that have a metric using it but lack the step metric (step_sync).

Deterministic: the same input gives the same rows.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable
from typing import Any

from pipeline import events as ev
from pipeline.matching import NameMatcher

log = logging.getLogger("runbus")

# Builds a named tuple from a ready tuple, skipping the generated __new__'s
# argument handling: the per-row event is made ~70 ns faster.
_new = tuple.__new__

#: Refused calls warned about one by one; the rest are only counted.
MAX_STEP_WARNINGS = 20


class StepWarning(UserWarning):
    """A log call was refused because its step is lower than the current step."""


#: Per-run output sequence numbers: call it for the next one.
Sequencer = Callable[[], int]


def sequencer(last: int = 0) -> Sequencer:
    """Numbers from ``last + 1`` on (a C-level counter: cheap per event)."""
    return itertools.count(last + 1).__next__


class StepMerger:
    """Stage: ``LogCall`` in, ``HistoryRow`` / ``PartialRow`` / ``Refused`` out."""

    def __init__(self, run_id: str, start_ts: float, seq: Sequencer, first_step: int = 0) -> None:
        self.run_id = run_id
        self.start_ts = start_ts
        self.seq = seq
        self.step = first_step
        self.row: dict[str, Any] | None = None
        self.row_ts = start_ts
        self.row_nonfinite = False
        self.row_dirty = False  # changed since the last partial write
        self.refused = 0
        self._reported_refused = 0
        self.rows = 0
        # step_sync: metric name (or glob) -> its step metric
        self._sync: NameMatcher[str] = NameMatcher()
        self._has_sync = False  # a plain attribute: checked once per row
        self._step_values: dict[str, Any] = {}
        self._step_metrics: frozenset[str] = frozenset()

    def feed(self, item: ev.Item, emit: Callable[[ev.Item], None]) -> None:
        """Process one item, emitting zero or more items downstream."""
        kind = item.kind
        if kind == "log":
            c: ev.LogCall = item  # type: ignore[assignment]
            if (
                c.step is None
                and c.commit is None
                and self.row is None
                and c.data
                and not self._has_sync
            ):
                # The common case, one call making one row, without the general path.
                ts = c.ts
                step = self.step
                self.step = step + 1
                self.rows += 1
                self.row_ts = ts
                emit(
                    _new(
                        ev.HistoryRow,
                        (
                            self.run_id,
                            self.seq(),
                            ts,
                            step,
                            ts - self.start_ts,
                            c.data,
                            c.nonfinite,
                            "row",
                        ),
                    )
                )
                return
            self._log(c, emit)
        elif kind == "flush":
            if self.row is not None and self.row_dirty:
                self._emit_partial(emit)
            self._emit_counters(emit)
            emit(item)
        elif kind == "stop":
            if self.row is not None:
                self._commit(emit)
            self._emit_counters(emit)
            emit(item)
        elif kind == "metric":
            self._define(item)  # type: ignore[arg-type]
            emit(item)
        else:
            emit(item)

    def _log(self, c: ev.LogCall, emit: Callable[[ev.Item], None]) -> None:
        step = c.step
        if step is not None and step != self.step:
            if step < self.step:
                self._refuse(c, emit)
                return
            if self.row is not None:
                self._commit(emit)
            self.step = step
        row = self.row
        if row is None:
            self.row = c.data
        else:
            row.update(c.data)
        self.row_ts = c.ts
        if c.nonfinite:
            self.row_nonfinite = True
        if c.commit or (c.commit is None and step is None):
            self._commit(emit)
        else:
            self.row_dirty = True

    def _commit(self, emit: Callable[[ev.Item], None]) -> None:
        row = self.row
        self.row = None
        self.row_dirty = False
        if row:
            if self._has_sync:
                self._step_sync(row)
            ts = self.row_ts
            emit(
                _new(
                    ev.HistoryRow,
                    (
                        self.run_id,
                        self.seq(),
                        ts,
                        self.step,
                        ts - self.start_ts,
                        row,
                        self.row_nonfinite,
                        "row",
                    ),
                )
            )
            self.rows += 1
        self.row_nonfinite = False
        self.step += 1

    def _emit_partial(self, emit: Callable[[ev.Item], None]) -> None:
        assert self.row is not None
        row = dict(self.row)
        if self._has_sync:
            self._step_sync(row)
        ts = self.row_ts
        emit(
            ev.PartialRow(
                self.run_id, self.seq(), ts, self.step, ts - self.start_ts, row, self.row_nonfinite
            )
        )
        self.row_dirty = False

    def _refuse(self, c: ev.LogCall, emit: Callable[[ev.Item], None]) -> None:
        assert c.step is not None
        self.refused += 1
        reason = f"step {c.step} is lower than the current step {self.step}"
        emit(ev.Refused(self.run_id, self.seq(), c.ts, c.step, self.step, c.data, reason))
        if self.refused <= MAX_STEP_WARNINGS:
            more = (
                " Further refused calls are only counted (metadata 'refused')."
                if self.refused == MAX_STEP_WARNINGS
                else ""
            )
            message = (
                f"runbus: log(step={c.step}) of keys {sorted(c.data)} refused: {reason}; "
                f"only the current and later steps can be written. The call is kept in "
                f"the event log as 'refused'.{more}"
            )
            try:
                warnings.warn(message, StepWarning, stacklevel=1)
            except Warning:
                # Warnings turned into errors must not stop the pipeline: log instead.
                log.warning("%s", message)

    def _emit_counters(self, emit: Callable[[ev.Item], None]) -> None:
        if self.refused != self._reported_refused:
            self._reported_refused = self.refused
            emit(ev.Metadata(self.run_id, self.seq(), self.row_ts, {"refused": self.refused}))

    def _define(self, m: ev.MetricDef) -> None:
        if m.step_metric is None or not m.step_sync:
            return
        self._sync.set(m.name, m.step_metric)
        self._step_metrics = frozenset(self._sync.values())
        self._has_sync = True

    def _step_sync(self, row: dict[str, Any]) -> None:
        values = self._step_values
        missing: list[str] = []
        for key in row:
            sm = self._sync.get(key)
            if sm is not None and sm != key and sm not in row and sm in values:
                missing.append(sm)
        for sm in missing:
            row[sm] = values[sm]
        for sm in self._step_metrics:
            if sm in row:
                values[sm] = row[sm]
