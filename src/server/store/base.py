"""The store contract shared by the SQLite and PostgreSQL backends.

This module holds what does not depend on a database: the record types the
store returns, its exceptions, the :class:`Store` protocol, the ingest planner
(turning a batch of decoded events into rows to write) and the builder for the
runs table's filters and sorts. Both backends run the same planner and the same
builder, so they cannot drift apart in what they store or how they compare.

Numeric history values live in a narrow table, one row per (run, key, step),
with ``value`` (a float, NULL when not finite) and ``kind`` (how to restore the
exact value: see :data:`KIND_FLOAT` and friends). SQLite reads a REAL NaN back
as NULL, and PostgreSQL would sort NaN above every number, so neither database
sees non-finite values as numbers: aggregates (min, max, first, last) skip
them, and the kind column brings them back exactly on a raw read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from pipeline.jsoncodec import TAG, untag

#: One event as decoded from a client: ``(kind, seq, ts, body)``.
EventTuple: TypeAlias = tuple[str, int, float, Any]
#: One filter of :meth:`Store.list_runs`: ``(field, op, value)``.
Filter: TypeAlias = tuple[str, str, Any]
#: Which narrow table a history query reads.
Source: TypeAlias = Literal["history", "system"]

# How a narrow-table value is restored: ``value`` holds the float for the first
# two; the rest store NULL in ``value`` and the kind says which special it was.
KIND_FLOAT = 0
KIND_INT = 1
KIND_NAN = 2
KIND_POS_INF = 3
KIND_NEG_INF = 4
# -0.0 stores value 0.0 (SQLite would keep it as the integer 0 and lose the
# sign); the kind restores it, and aggregates see it as the 0 it equals.
KIND_NEG_ZERO = 5
_SPECIAL = {
    KIND_NAN: math.nan,
    KIND_POS_INF: math.inf,
    KIND_NEG_INF: -math.inf,
    KIND_NEG_ZERO: -0.0,
}

RUN_STATES = frozenset({"running", "finished", "failed", "crashed"})
FILTER_OPS = frozenset({"=", "!=", "<", "<=", ">", ">=", "contains"})


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base class of the store's own errors."""


class StoreClosedError(StoreError):
    """The store was used after :meth:`Store.aclose`."""


class RunNotFoundError(StoreError, LookupError):
    """Events were appended to a run that was never created: call ``upsert_run`` first."""

    def __init__(self, project: str, run_id: str) -> None:
        super().__init__(
            f"run {project}/{run_id} does not exist; create or resume it with upsert_run first"
        )
        self.project = project
        self.run_id = run_id


class SeqGapError(StoreError):
    """A batch skipped sequence numbers; nothing of it was stored.

    ``expected`` is the next sequence number the store needs: resend from there.
    """

    def __init__(self, project: str, run_id: str, expected: int, got: int) -> None:
        super().__init__(
            f"run {project}/{run_id}: expected event seq {expected}, got {got}; "
            f"resend the events from seq {expected}"
        )
        self.project = project
        self.run_id = run_id
        self.expected = expected
        self.got = got


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the store knows it (``state`` already reads stale runs as crashed)."""

    project: str
    run_id: str
    name: str | None
    state: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    tags: list[str]
    group: str | None
    notes: str | None
    created: float
    heartbeat_ts: float
    finished_ts: float | None
    exit_code: int | None
    last_seq: int


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    """A project: its name, how many runs it holds and when one last changed."""

    name: str
    run_count: int
    last_activity: float


@dataclass(frozen=True, slots=True)
class OutputLine:
    """One console line of a run (``line_no`` counts from 1)."""

    line_no: int
    ts: float
    stream: str
    text: str


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A file the run reported saving (path relative to its run directory)."""

    path: str
    sha256: str
    size: int
    ts: float


@dataclass(slots=True)
class Series:
    """One (run, key) series, as parallel arrays.

    Raw (``downsampled`` False): one entry per point, ordered by step; ``first``,
    ``min``, ``max`` and ``last`` are the same list of exact values (NaN and
    infinities included, ints as ints) and every ``count`` is 1.

    Downsampled: one entry per non-empty bucket, at most the buckets asked
    for; ``x`` is the smallest x in the bucket, ``first``/``last`` the values at
    the bucket's lowest/highest step and ``min``/``max`` the extremes, all over
    finite values only (None when the bucket holds none); ``count`` counts
    every point, non-finite ones included. Each entry is exact for the points
    it covers; on a large range a bucket is a union of whole rollup blocks, so
    its edges snap to block edges (see :mod:`server.store.rollup`).

    ``cursor`` is the highest step returned: pass it back as ``after`` to get
    only newer points.
    """

    run_id: str
    key: str
    x: list[float] = field(default_factory=list)
    first: list[Any] = field(default_factory=list)
    min: list[Any] = field(default_factory=list)
    max: list[Any] = field(default_factory=list)
    last: list[Any] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    downsampled: bool = False
    cursor: int | None = None


# --------------------------------------------------------------------------- protocol


class Store(Protocol):
    """What the server needs from a database. Every method is a coroutine.

    Both implementations are safe to call from many tasks at once; writes to one
    run are serialised (SQLite: one worker thread; PostgreSQL: a row lock).
    """

    stale_after: float

    async def aclose(self) -> None:
        """Close the store; idempotent. Later calls raise :class:`StoreClosedError`."""
        ...

    async def upsert_run(
        self,
        project: str,
        run_id: str,
        *,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        group: str | None = None,
        notes: str | None = None,
        metadata: dict[str, Any] | None = None,
        state: str = "running",
    ) -> RunRecord:
        """Create a run or resume it; on resume, fields given as None are kept."""
        ...

    async def append_events(self, project: str, run_id: str, events: Sequence[EventTuple]) -> int:
        """Store a batch of events in one transaction; return the run's new last seq.

        Raises :class:`RunNotFoundError`, :class:`SeqGapError`, ``ValueError``
        for a batch whose seqs are not increasing.
        """
        ...

    async def last_seq(self, project: str, run_id: str) -> int:
        """The highest stored seq of a run (0 for an unknown run)."""
        ...

    async def list_projects(self) -> list[ProjectRecord]:
        """Every project, by name."""
        ...

    async def list_runs(
        self,
        project: str,
        *,
        filters: Sequence[Filter] = (),
        sort: str = "-created",
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[RunRecord], int]:
        """One page of a project's runs and the total that match the filters."""
        ...

    async def get_run(self, project: str, run_id: str) -> RunRecord | None:
        """One run, or None."""
        ...

    async def history(
        self,
        project: str,
        run_ids: Sequence[str],
        keys: Sequence[str],
        *,
        x: str = "_step",
        buckets: int = 1000,
        x_min: float | None = None,
        x_max: float | None = None,
        after: int | None = None,
        source: Source = "history",
    ) -> dict[tuple[str, str], Series]:
        """Series for each (run, key) that has points."""
        ...

    async def run_keys(self, project: str, run_id: str) -> dict[str, list[str]]:
        """The keys a run has logged, each list sorted; empty lists for an unknown run.

        ``history``: keys with numeric row values; ``values``: keys with other row
        values (strings, media references, lists...); ``system``: system metrics.
        A key logged both ways appears in both lists.
        """
        ...

    async def values(
        self,
        project: str,
        run_id: str,
        keys: Sequence[str],
        *,
        after_step: int | None = None,
        limit: int = 1000,
    ) -> list[tuple[str, int, Any]]:
        """Non-numeric row values as ``(key, step, value)``, by step then key.

        Only steps above ``after_step``, at most ``limit`` (pass the last step
        back as ``after_step`` for the next page). Raises ``ValueError`` for a
        ``limit`` below 1.
        """
        ...

    async def output(
        self, project: str, run_id: str, *, after_line: int = 0, limit: int = 1000
    ) -> list[OutputLine]:
        """Console lines numbered above ``after_line``, at most ``limit``."""
        ...

    async def files(self, project: str, run_id: str) -> list[FileRecord]:
        """Files the run reported, by path."""
        ...


# --------------------------------------------------------------------------- values


def encode_number(v: Any) -> tuple[float | None, int] | None:
    """``(value, kind)`` for a number the narrow table can hold, else None.

    bool is not a number here (it is a category on a chart); a non-finite float
    stores NULL and its kind.
    """
    t = type(v)
    if t is float:
        if v - v == 0.0:
            if v == 0.0 and math.copysign(1.0, v) < 0:
                return 0.0, KIND_NEG_ZERO
            return v, KIND_FLOAT
        if v != v:
            return None, KIND_NAN
        return None, KIND_POS_INF if v > 0 else KIND_NEG_INF
    if t is int:
        return float(v), KIND_INT
    if t is dict and len(v) == 1 and TAG in v:
        # A client that forwarded jsoncodec tags undecoded: restore the float.
        return encode_number(untag(v))
    return None


def decode_number(value: float | None, kind: int) -> float | int:
    """The exact value stored as ``(value, kind)``."""
    if kind == KIND_FLOAT:
        return value  # type: ignore[return-value]
    if kind == KIND_INT:
        return int(value)  # type: ignore[arg-type]
    return _SPECIAL[kind]


# --------------------------------------------------------------------------- ingest


@dataclass(slots=True)
class RunState:
    """The parts of a run's row that ingesting a batch reads and rewrites."""

    rid: int
    last_seq: int
    state: str
    config: dict[str, Any] | None
    summary: dict[str, Any] | None
    metadata: dict[str, Any] | None
    metrics: dict[str, Any] | None
    partial_step: int | None
    partial_keys: list[str]
    stats_count: int
    output_lines: int


@dataclass(slots=True)
class Plan:
    """Everything one batch writes. Deletes run before inserts; inserts upsert."""

    last_seq: int
    # (key, step) -> (step, ts, runtime, value, kind)
    series: dict[tuple[str, int], tuple[int, float, float, float | None, int]]
    # (key, step) -> (step, json)
    values: dict[tuple[str, int], tuple[int, str]]
    deletes: list[tuple[str, int]]
    system: list[tuple[str, int, float, float, float | None, int]]
    output: list[tuple[int, float, str, str]]
    files: list[tuple[str, str, int, float]]
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    state: str | None = None
    exit_code: int | None = None
    finished_ts: float | None = None
    partial_step: int | None = None
    partial_keys: list[str] = field(default_factory=list)
    stats_count: int = 0
    output_lines: int = 0
    # What the batch touched, for rollup upkeep: the keys of its rows (numeric
    # or not) and their steps, the numeric keys of its stats and their sample
    # indexes. Gathered per event, so nobody walks every point again.
    row_keys: set[str] = field(default_factory=set)
    row_steps: list[int] = field(default_factory=list)
    stats_keys: set[str] = field(default_factory=set)
    stats_steps: list[int] = field(default_factory=list)


def new_events(
    project: str, run_id: str, last_seq: int, events: Sequence[EventTuple]
) -> Sequence[EventTuple]:
    """The events of a batch that are not stored yet, checked for order and gaps.

    Events at or below ``last_seq`` are a retried or overlapping batch and are
    dropped; the rest must continue ``last_seq`` without a gap.
    """
    prev = -1
    start = len(events)
    for i, e in enumerate(events):
        seq = e[1]
        if seq <= prev:
            raise ValueError(
                f"run {project}/{run_id}: event seqs must increase within a batch "
                f"(seq {seq} after {prev})"
            )
        prev = seq
        if seq > last_seq and start == len(events):
            start = i
    fresh = events[start:]
    expected = last_seq + 1
    for e in fresh:
        if e[1] != expected:
            raise SeqGapError(project, run_id, last_seq + 1, e[1])
        expected += 1
    return fresh


def plan_batch(state: RunState, events: Sequence[EventTuple], dumps: Callable[[Any], str]) -> Plan:
    """Turn new, contiguous events into the writes of one transaction.

    ``state`` must hold the run's JSON columns already loaded (the backend loads
    them only when :func:`needs_json` says the batch touches them).
    """
    plan = Plan(
        last_seq=state.last_seq,
        series={},
        values={},
        deletes=[],
        system=[],
        output=[],
        files=[],
        partial_step=state.partial_step,
        partial_keys=state.partial_keys,
        stats_count=state.stats_count,
        output_lines=state.output_lines,
    )
    series = plan.series
    values = plan.values
    for kind, seq, ts, body in events:
        plan.last_seq = seq
        if kind == "row" or kind == "partial":
            step = int(body["step"])
            runtime = float(body.get("runtime") or 0.0)
            data: dict[str, Any] = body["data"]
            if plan.partial_step == step:
                # A later row (or a fuller partial) for the step that holds
                # partial values replaces them: forget them in this batch and
                # delete them from the database, whichever table they went to.
                for k in plan.partial_keys:
                    series.pop((k, step), None)
                    values.pop((k, step), None)
                    plan.deletes.append((k, step))
            plan.row_steps.append(step)
            plan.row_keys.update(data)
            for k, v in data.items():
                if type(v) is float and v - v == 0.0 and v != 0.0:
                    # The common case, without a call: a finite float, not a zero.
                    series[(k, step)] = (step, ts, runtime, v, KIND_FLOAT)
                    continue
                num = encode_number(v)
                if num is not None:
                    series[(k, step)] = (step, ts, runtime, num[0], num[1])
                else:
                    values[(k, step)] = (step, dumps(v))
            if kind == "partial":
                plan.partial_step = step
                plan.partial_keys = list(data)
            elif plan.partial_step == step:
                plan.partial_step = None
                plan.partial_keys = []
        elif kind == "stats":
            idx = plan.stats_count
            plan.stats_count += 1
            runtime = float(body.get("runtime") or 0.0)
            plan.stats_steps.append(idx)
            for k, v in body["values"].items():
                num = encode_number(v)
                # System metrics are numbers; anything else has no series to go to.
                if num is not None:
                    plan.system.append((k, idx, ts, runtime, num[0], num[1]))
                    plan.stats_keys.add(k)
        elif kind == "config":
            plan.config = {**(plan.config or state.config or {}), **body["values"]}
        elif kind == "summary":
            plan.summary = dict(body["values"])
        elif kind == "summary_set":
            summ = {**(plan.summary or state.summary or {}), **body["values"]}
            for k in body.get("deleted") or ():
                summ.pop(k, None)
            plan.summary = summ
        elif kind == "metadata":
            plan.metadata = {**(plan.metadata or state.metadata or {}), **body["values"]}
        elif kind == "metric":
            metrics = dict(plan.metrics or state.metrics or {})
            fields = {k: v for k, v in body.items() if k != "name"}
            metrics[body["name"]] = fields
            plan.metrics = metrics
        elif kind == "output":
            stream = str(body.get("stream", "stdout"))
            for line in str(body.get("text", "")).splitlines():
                plan.output_lines += 1
                plan.output.append((plan.output_lines, ts, stream, line))
        elif kind == "file":
            plan.files.append((str(body["path"]), str(body["sha256"]), int(body["size"]), ts))
        elif kind == "finish":
            code = int(body.get("exit_code", 0))
            plan.exit_code = code
            plan.state = "finished" if code == 0 else "failed"
            plan.finished_ts = ts
        # "refused" and kinds from newer clients only refresh the heartbeat.
    return plan


_JSON_KINDS = frozenset({"config", "summary", "summary_set", "metadata", "metric"})


def needs_json(events: Sequence[EventTuple]) -> bool:
    """Whether planning the batch reads the run's JSON columns (most batches don't)."""
    return any(e[0] in _JSON_KINDS for e in events)


# --------------------------------------------------------------------------- runs query


class Dialect(Protocol):
    """How one database spells the pieces of a runs query."""

    def param(self, params: list[Any], value: Any) -> str:
        """Append ``value`` to ``params`` and return its placeholder."""
        ...

    def json_path(self, params: list[Any], column: str, path: list[str]) -> tuple[str, str, str]:
        """``(type, number, text)`` expressions for a JSON path.

        ``type`` reads 'num', 'str', 'true', 'false', 'null' or another word
        (object, array); NULL when the path is missing.
        """
        ...

    def tags_contains(self, params: list[Any], value: str) -> str:
        """A condition: the run's tags hold ``value``."""
        ...

    def substr(self, text_expr: str, needle: str) -> str:
        """A condition: ``needle`` (a placeholder) occurs in ``text_expr``."""
        ...

    def collate(self, text_expr: str) -> str:
        """``text_expr`` compared bytewise (code point order), as SQLite does."""
        ...

    def bucket_float(self, x: str, lo: str, n: str, width: str) -> str:
        """The bucket (0..n-1) of a float ``x``: ``min(n-1, floor((x-lo)*n/width))``."""
        ...


_COLUMNS_NUM = {
    "created": "created",
    "heartbeat": "heartbeat_ts",
    "heartbeat_ts": "heartbeat_ts",
    "finished": "finished_ts",
    "finished_ts": "finished_ts",
    "exit_code": "exit_code",
    "last_seq": "last_seq",
}
_COLUMNS_TEXT = {
    "name": "name",
    "group": "group_name",
    "notes": "notes",
    "id": "run_id",
    "run_id": "run_id",
}
_JSON_COLUMNS = ("config", "summary", "metadata")


def state_expr(stale_before: float) -> str:
    """The run's state with a heartbeat older than ``stale_before`` read as crashed.

    The time is inlined as a literal (``repr`` of a float is valid SQL on both
    backends) rather than bound: PostgreSQL refuses a bound parameter that a
    statement does not use, and the count query often does not use it.
    """
    return (
        f"(CASE WHEN state = 'running' AND heartbeat_ts < {float(stale_before)!r} "
        "THEN 'crashed' ELSE state END)"
    )


def _split_field(name: str) -> tuple[str, list[str]] | None:
    """``("config", ["opt", "lr"])`` for ``config.opt.lr``; None for a column."""
    head, dot, rest = name.partition(".")
    if not dot:
        return None
    if head not in _JSON_COLUMNS or not rest:
        raise ValueError(
            f"unknown run field {name!r}: use config.<key>, summary.<key>, metadata.<key> "
            f"or one of {sorted({*_COLUMNS_NUM, *_COLUMNS_TEXT, 'state', 'tags'})}"
        )
    return head, rest.split(".")


def _expr(
    d: Dialect, params: list[Any], name: str, state_sql: str
) -> tuple[str | None, str | None, str | None]:
    """``(type_expr, num_expr, text_expr)`` for a field; type None for a plain column."""
    split = _split_field(name)
    if split is not None:
        return d.json_path(params, split[0], split[1])
    if name in _COLUMNS_NUM:
        return None, _COLUMNS_NUM[name], None
    if name in _COLUMNS_TEXT:
        return None, None, _COLUMNS_TEXT[name]
    if name == "state":
        return None, None, state_sql
    if name == "tags":
        raise ValueError("tags support only the 'contains' filter and cannot be sorted on")
    raise ValueError(
        f"unknown run field {name!r}: use config.<key>, summary.<key>, metadata.<key> "
        f"or one of {sorted({*_COLUMNS_NUM, *_COLUMNS_TEXT, 'state', 'tags'})}"
    )


def filter_sql(d: Dialect, params: list[Any], f: Filter, state_sql: str) -> str:
    """One WHERE condition for a filter; both backends build it the same way.

    The filter value's type picks the comparison: numbers compare numerically
    with numeric fields only, strings compare as text (code point order) with
    string fields only, booleans match JSON true/false, None matches a missing
    or null field. ``!=`` is the negation of ``=``, so it also matches runs that
    lack the field.
    """
    name, op, value = f
    if op not in FILTER_OPS:
        raise ValueError(f"unknown filter op {op!r} on {name!r}: use one of {sorted(FILTER_OPS)}")
    if name == "tags":
        if op != "contains" or not isinstance(value, str):
            raise ValueError("filter tags with ('tags', 'contains', '<tag>')")
        return d.tags_contains(params, value)
    typ, num, text = _expr(d, params, name, state_sql)
    negate = op == "!="
    cmp = "=" if negate else op
    if value is None:
        if op not in ("=", "!="):
            raise ValueError(f"filter {name!r}: None only works with = and !=")
        if typ is not None:
            cond = f"({typ} IS NULL OR {typ} = 'null')"
        else:
            cond = f"({num or text} IS NULL)"
    elif isinstance(value, bool):
        if op not in ("=", "!="):
            raise ValueError(f"filter {name!r}: a boolean only works with = and !=")
        if typ is None:
            raise ValueError(f"filter {name!r}: that field is not a boolean")
        cond = f"({typ} = '{'true' if value else 'false'}')"
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"filter {name!r}: compare with a finite number")
        if op == "contains":
            raise ValueError(f"filter {name!r}: 'contains' takes a string")
        if num is None:
            raise ValueError(f"filter {name!r}: that field is text; compare it with a string")
        p = d.param(params, float(value))
        cond = f"({num} {cmp} {p})" if typ is None else f"({typ} = 'num' AND {num} {cmp} {p})"
    elif isinstance(value, str):
        if text is None:
            raise ValueError(f"filter {name!r}: that field is a number; compare it with a number")
        p = d.param(params, value)
        cond = d.substr(text, p) if op == "contains" else f"({d.collate(text)} {cmp} {p})"
        if typ is not None:
            cond = f"({typ} = 'str' AND {cond})"
    else:
        raise ValueError(
            f"filter {name!r}: value of type {type(value).__name__} is not comparable; "
            "use a number, string, bool or None"
        )
    return f"(({cond}) IS NOT TRUE)" if negate else cond


def order_sql(d: Dialect, params: list[Any], sort: str, state_sql: str) -> str:
    """ORDER BY terms for ``sort`` (``-`` prefix: descending).

    Numbers sort before strings, and runs without the field (or with an
    object, array, bool or null there) come last in both directions, so both
    backends agree on any mix of types. Ties break on creation time, then id.
    """
    desc = sort.startswith("-")
    name = sort[1:] if desc else sort
    direction = "DESC" if desc else "ASC"
    typ, num, text = _expr(d, params, name, state_sql)
    if typ is not None:
        rank = f"(CASE {typ} WHEN 'num' THEN 0 WHEN 'str' THEN 1 ELSE 2 END)"
        num_e = f"(CASE WHEN {typ} = 'num' THEN {num} END)"
        text_e = f"(CASE WHEN {typ} = 'str' THEN {text} END)"
    elif num is not None:
        rank = f"(CASE WHEN {num} IS NULL THEN 2 ELSE 0 END)"
        num_e, text_e = num, "NULL"
    else:
        assert text is not None
        rank = f"(CASE WHEN {text} IS NULL THEN 2 ELSE 1 END)"
        num_e, text_e = "NULL", text
    terms = [f"(CASE WHEN {rank} = 2 THEN 1 ELSE 0 END) ASC", f"{rank} {direction}"]
    # PostgreSQL refuses a constant (NULL) as an ORDER BY term.
    if num_e != "NULL":
        terms.append(f"{num_e} {direction}")
    if text_e != "NULL":
        terms.append(f"{d.collate(text_e)} {direction}")
    terms += [f"created {direction}", f"id {direction}"]
    return ", ".join(terms)


def check_run_fields(state: str, tags: Sequence[str] | None) -> None:
    """Validate what ``upsert_run`` is given; raises ValueError naming the field."""
    if state not in RUN_STATES:
        raise ValueError(f"state {state!r} is not one of {sorted(RUN_STATES)}")
    if tags is not None and not all(isinstance(t, str) for t in tags):
        raise ValueError("tags must be a list of strings")


def x_axis(x: str) -> tuple[str, str]:
    """Which x-axis a history query uses: ``("col", name)`` or ``("metric", key)``."""
    if x == "_step":
        return "col", "step"
    if x == "_runtime":
        return "col", "runtime"
    if x == "_timestamp":
        return "col", "ts"
    if x.startswith("_"):
        raise ValueError(f"x={x!r}: use _step, _runtime, _timestamp or a logged metric")
    return "metric", x


@dataclass(frozen=True, slots=True)
class HistorySql:
    """The three statements of one history query.

    ``count`` takes ``params``; ``raw`` takes ``params + [limit]``; ``agg``
    takes ``params + [lo, n, width]`` (see :func:`bucket_params`).
    """

    count: str
    raw: str
    agg: str
    params: list[Any]


def history_sql(
    d: Dialect,
    table: str,
    x_kind: str,
    x_name: str,
    *,
    rid: int,
    kid: int,
    xkid: int | None,
    x_min: float | None,
    x_max: float | None,
    after: int | None,
) -> HistorySql:
    """SQL for one (run, key) history query, the same shape on both backends.

    ``count`` gives (points, min x, max x, max step) in range; ``raw`` the
    points themselves; ``agg`` one row per non-empty bucket: bucket, smallest
    x, count, min, max, first, last and the highest step. ``first``/``last``
    come from looking up the lowest/highest step with a finite value, which
    the primary key answers directly, instead of a window over every point
    (scalar subqueries, not joins: no plan can make them scans, even on a
    table PostgreSQL has not analyzed yet).
    """
    if table not in ("series", "system"):
        raise ValueError(f"unknown series table {table!r}")
    params: list[Any] = []
    r = d.param(params, rid)
    k = d.param(params, kid)
    frm = f"{table} s"
    where = f"s.run = {r} AND s.key = {k}"
    if x_kind == "metric":
        # Each point's x by a primary-key lookup (a scalar subquery, not a
        # join: PostgreSQL can plan a join over a table it has not analyzed
        # yet as a scan of the whole table, seconds for a small series).
        mk = d.param(params, xkid)
        frm = (
            f"(SELECT s.run, s.key, s.step, s.value, s.kind, (SELECT m.value FROM {table} m "
            f"WHERE m.run = s.run AND m.key = {mk} AND m.step = s.step) AS mx "
            f"FROM {table} s) s"
        )
        x = "s.mx"
        where += " AND s.mx IS NOT NULL"
    else:
        x = f"s.{x_name}"
    is_step = x == "s.step"
    if x_min is not None:
        lo_b = math.ceil(x_min) if is_step else float(x_min)
        where += f" AND {x} >= {d.param(params, lo_b)}"
    if x_max is not None:
        hi_b = math.floor(x_max) if is_step else float(x_max)
        where += f" AND {x} <= {d.param(params, hi_b)}"
    if after is not None:
        where += f" AND s.step > {d.param(params, int(after))}"
    src = f"FROM {frm} WHERE {where}"
    count = f"SELECT COUNT(*), MIN({x}), MAX({x}), MAX(s.step) {src}"
    tail = list(params)
    raw = f"SELECT {x}, s.value, s.kind, s.step {src} ORDER BY s.step LIMIT {d.param(tail, 0)}"
    tail = list(params)
    lo = d.param(tail, 0)
    n = d.param(tail, 1)
    width = d.param(tail, 1)
    # Steps bucket in integer arithmetic: span = hi - lo + 1 puts every step in
    # 0..n-1 with no clamp, and both databases truncate integer division alike.
    bucket = f"(((s.step - {lo}) * {n}) / {width})" if is_step else d.bucket_float(x, lo, n, width)
    agg = (
        f"WITH b AS (SELECT {bucket} AS b, MIN({x}) AS x0, COUNT(*) AS n, "
        "MIN(s.value) AS vmin, MAX(s.value) AS vmax, "
        "MIN(CASE WHEN s.value IS NOT NULL THEN s.step END) AS s0, "
        "MAX(CASE WHEN s.value IS NOT NULL THEN s.step END) AS s1, "
        f"MAX(s.step) AS smax {src} GROUP BY 1) "
        "SELECT b.b, b.x0, b.n, b.vmin, b.vmax, "
        f"(SELECT o.value FROM {table} o WHERE o.run = {r} AND o.key = {k} AND o.step = b.s0), "
        f"(SELECT o.value FROM {table} o WHERE o.run = {r} AND o.key = {k} AND o.step = b.s1), "
        "b.smax FROM b ORDER BY b.b"
    )
    return HistorySql(count, raw, agg, params)


#: Most points one raw or cursor read returns (the cursor continues from there).
RAW_LIMIT = 100_000


def run_keys_sql(d: Dialect, table: str, rid: int) -> tuple[str, list[Any]]:
    """The names of the keys a run has in a narrow table, by a skip scan.

    Each step of the recursion seeks the next key id in the (run, key, step)
    primary key, so the cost grows with the number of keys, not of points;
    ``SELECT DISTINCT`` would read every point of the run.
    """
    if table not in ("series", "system", "row_values"):
        raise ValueError(f"unknown narrow table {table!r}")
    params: list[Any] = []
    r = d.param(params, rid)
    sql = (
        f"WITH RECURSIVE k(id) AS (SELECT (SELECT MIN(key) FROM {table} WHERE run = {r}) "
        f"UNION ALL SELECT (SELECT MIN(key) FROM {table} WHERE run = {r} AND key > k.id) "
        "FROM k WHERE k.id IS NOT NULL) "
        "SELECT keys.name FROM k JOIN keys ON keys.id = k.id"
    )
    return sql, params


def check_values_limit(limit: int) -> None:
    """Refuse a ``values`` page size below 1 (raises ValueError naming it)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def values_page(rows: Sequence[tuple[str, int, Any]], limit: int) -> list[tuple[str, int, Any]]:
    """One page of ``(key, step, value)`` rows, by step then key, never splitting a step.

    ``rows`` holds, for each key asked, its first ``limit`` rows above the
    cursor (enough to see every row of the page's last step). A page that
    would end inside a step stops before that step, so passing the page's last
    step back as the cursor loses nothing; a single step with more than
    ``limit`` values comes whole.
    """
    ordered = sorted(rows, key=lambda r: (r[1], r[0]))
    if len(ordered) <= limit:
        return ordered
    cut = ordered[limit - 1][1]
    if ordered[limit][1] != cut:
        return ordered[:limit]
    page = [r for r in ordered[:limit] if r[1] != cut]
    return page or [r for r in ordered if r[1] == cut]


def bucket_params(is_step: bool, lo: float, hi: float, buckets: int) -> tuple[Any, int, Any]:
    """The (lo, n, width) the agg query buckets with (see :func:`history_sql`)."""
    if is_step:
        return int(lo), buckets, int(hi) - int(lo) + 1
    width = float(hi) - float(lo)
    return float(lo), buckets, width if width > 0 else 1.0


def series_from_raw(run_id: str, key: str, rows: Sequence[Sequence[Any]]) -> Series:
    """A raw :class:`Series` from ``(x, value, kind, step)`` rows."""
    xs = [r[0] for r in rows]
    vals = [decode_number(r[1], r[2]) for r in rows]
    return Series(
        run_id,
        key,
        x=xs,
        first=vals,
        min=vals,
        max=vals,
        last=vals,
        count=[1] * len(rows),
        downsampled=False,
        cursor=rows[-1][3] if rows else None,
    )


def series_from_agg(run_id: str, key: str, rows: Sequence[Sequence[Any]]) -> Series:
    """A downsampled :class:`Series` from the agg query's rows."""
    return Series(
        run_id,
        key,
        x=[r[1] for r in rows],
        count=[int(r[2]) for r in rows],
        min=[r[3] for r in rows],
        max=[r[4] for r in rows],
        first=[r[5] for r in rows],
        last=[r[6] for r in rows],
        downsampled=True,
        cursor=max((int(r[7]) for r in rows), default=None),
    )
