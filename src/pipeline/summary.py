"""Metric definitions and run summaries.

By default a key's summary is its last value. ``define_metric(summary=...)``
chooses aggregations (min, max, mean, first, last, best, none) for a name or a
glob with a trailing ``*``; the summary of such a key is a dict of them, e.g.
``{"min": 0.1, "max": 0.9}``. ``run.summary[k] = v`` shows ``v`` for ``k`` until
``k`` is logged again; the aggregations keep running underneath it.

NaN never becomes a min, max, mean or best (it is skipped there); it is kept as
a first or last value. Deterministic: the same events give the same summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipeline import events as ev
from pipeline.matching import NameMatcher
from pipeline.steps import Sequencer

AGGREGATIONS = ("min", "max", "mean", "first", "last", "best", "none")
GOALS = {"minimize": "minimize", "min": "minimize", "maximize": "maximize", "max": "maximize"}


def parse_summary(spec: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Validate a ``summary=`` argument (``"min,max"`` or a list) into a tuple."""
    if spec is None:
        return None
    if isinstance(spec, str):
        parts = [p.strip().lower() for p in spec.split(",") if p.strip()]
    else:
        parts = [str(p).strip().lower() for p in spec]
    if not parts:
        raise ValueError(
            "define_metric(summary=...) is empty; use e.g. 'min', 'max,last' or 'none'"
        )
    bad = [p for p in parts if p not in AGGREGATIONS]
    if bad:
        raise ValueError(
            f"define_metric(summary=...): unknown aggregation(s) {', '.join(map(repr, bad))}; "
            f"choose from {', '.join(AGGREGATIONS)}"
        )
    if "none" in parts and len(parts) > 1:
        raise ValueError("define_metric(summary=...): 'none' cannot be combined with others")
    return tuple(dict.fromkeys(parts))


def parse_goal(goal: str | None) -> str | None:
    """Validate ``goal=`` (minimize/maximize, or min/max)."""
    if goal is None:
        return None
    if not isinstance(goal, str) or goal.lower() not in GOALS:
        raise ValueError(f"define_metric(goal={goal!r}): use 'minimize' or 'maximize'")
    return GOALS[goal.lower()]


@dataclass(frozen=True)
class MetricSpec:
    """The summary-relevant part of a metric definition."""

    summary: tuple[str, ...] | None
    goal: str | None


class _Agg:
    __slots__ = ("count", "first", "has_first", "last", "max", "min", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min: Any = None
        self.max: Any = None
        self.first: Any = None
        self.has_first = False
        self.last: Any = None

    def add(self, v: Any) -> None:
        if not self.has_first:
            self.first = v
            self.has_first = True
        self.last = v
        t = type(v)
        if (t is float or t is int) and v == v:  # numbers, not NaN
            if self.min is None or v < self.min:
                self.min = v
            if self.max is None or v > self.max:
                self.max = v
            if not math.isinf(v):
                self.count += 1
                self.total += v

    def value(self, name: str, goal: str | None) -> tuple[bool, Any]:
        if name == "min":
            return self.min is not None, self.min
        if name == "max":
            return self.max is not None, self.max
        if name == "mean":
            return self.count > 0, (self.total / self.count if self.count else None)
        if name == "first":
            return self.has_first, self.first
        if name == "last":
            return self.has_first, self.last
        if name == "best":
            best = self.max if goal == "maximize" else self.min
            return best is not None, best
        return False, None


class SummaryStage:
    """Stage: keeps aggregations; emits a ``Summary`` snapshot at flushes and stop."""

    def __init__(self, run_id: str, seq: Sequencer) -> None:
        self.run_id = run_id
        self.seq = seq
        self.last: dict[str, Any] = {}  # keys without a definition: last value
        self.aggs: dict[str, _Agg] = {}  # keys with a definition
        self.overrides: dict[str, Any] = {}
        self.deleted: set[str] = set()
        self._specs: NameMatcher[MetricSpec] = NameMatcher()
        self._has_specs = False  # a plain attribute: checked once per row
        self._plain = True  # no definitions, overrides or deletions yet
        self._dirty = False
        self._ts = 0.0

    # -- stage ---------------------------------------------------------------

    def feed(self, item: ev.Item, emit: Callable[[ev.Item], None]) -> None:
        """Process one item, emitting it (and a snapshot before flush/stop)."""
        kind = item.kind
        if kind == "row":
            if self._plain:
                # No definitions or overrides: the summary is each key's last value.
                self.last.update(item.data)  # type: ignore[union-attr]
                self._dirty = True
                self._ts = item.ts  # type: ignore[union-attr]
                emit(item)
                return
            self.add_row(item.data, item.ts)  # type: ignore[union-attr]
        elif kind == "flush" or kind == "stop":
            if self._dirty:
                emit(ev.Summary(self.run_id, self.seq(), self._ts, self.snapshot()))
                self._dirty = False
        elif kind == "metric":
            self.define(item)  # type: ignore[arg-type]
        elif kind == "summary_set":
            self.override(item.values, item.deleted)  # type: ignore[union-attr]
            self._ts = item.ts  # type: ignore[union-attr]
        elif kind == "barrier":
            item.completion.result = self.snapshot()  # type: ignore[union-attr]
        emit(item)

    # -- state ---------------------------------------------------------------

    def add_row(self, data: dict[str, Any], ts: float) -> None:
        """Fold one committed row into the summary."""
        self._dirty = True
        self._ts = ts
        if self.overrides or self.deleted:
            for k in data:
                self.overrides.pop(k, None)
                self.deleted.discard(k)
        if not self._has_specs:
            self.last.update(data)
            return
        for k, v in data.items():
            if self._specs.get(k) is None:
                self.last[k] = v
            else:
                agg = self.aggs.get(k)
                if agg is None:
                    agg = self.aggs[k] = _Agg()
                agg.add(v)

    def define(self, m: ev.MetricDef) -> None:
        """Register a metric definition; later rows aggregate by it."""
        self._specs.set(m.name, MetricSpec(m.summary, m.goal))
        self._has_specs = True
        self._plain = False
        # Keys seen before the definition carry their last value over as history.
        for k in [k for k in self.last if self._specs.get(k) is not None]:
            agg = self.aggs[k] = _Agg()
            agg.add(self.last.pop(k))
        self._dirty = True
        self._ts = m.ts

    def override(self, values: dict[str, Any], deleted: Iterable[str]) -> None:
        """Apply ``run.summary[k] = v`` and ``del run.summary[k]``."""
        self._plain = False
        for k in deleted:
            self.overrides.pop(k, None)
            self.deleted.add(k)
        for k, v in values.items():
            self.deleted.discard(k)
            self.overrides[k] = v
        self._dirty = True

    def snapshot(self) -> dict[str, Any]:
        """The summary as shown: aggregations, then overrides on top."""
        out: dict[str, Any] = {}
        for k, v in self.last.items():
            out[k] = v
        for k, agg in self.aggs.items():
            spec = self._specs.get(k)
            names = spec.summary if spec is not None else None
            if names is None:
                out[k] = agg.last
            elif names == ("none",):
                continue
            else:
                shown: dict[str, Any] = {}
                for name in names:
                    ok, value = agg.value(name, spec.goal if spec else None)
                    if ok:
                        shown[name] = value
                if shown:
                    out[k] = shown
        for k in self.deleted:
            out.pop(k, None)
        out.update(self.overrides)
        return dict(sorted(out.items()))
