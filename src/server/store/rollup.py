"""Pre-aggregated rollup blocks: how history over millions of points stays fast.

Every narrow table (``series``, ``system``) has a rollup table beside it
(``series_rollup``, ``system_rollup``) holding, per (run, key), one row per
block of ``2**shift`` consecutive steps at each shift of :data:`ROLLUP_SHIFTS`:
the count of points, the lowest and highest step, min and max over finite
values, the first and last finite value (and their steps), the range of
``runtime`` and ``ts`` and the count of finite values (``nf``, added by
migration 4). A block row covers exactly the points whose
``step >> shift`` is its ``block``.

Ingest keeps them exact in the batch's transaction. A batch that only adds
points (the usual run logging forward) merges its own block aggregates,
computed from the planned points, into the stored blocks (:func:`batch_blocks`,
:func:`merge_upsert_sql`). Any other batch (steps rewritten, points deleted)
recomputes every block it touched from the points (finest shift) or from the
finer blocks (coarser shifts) (:func:`refresh_sql`), whatever order the steps
came in. A downsampled history query then reads a few thousand block rows
instead of every point: each bucket is a union of whole blocks, so its
aggregates stay exact and its edges snap to block edges; points at the edges
of a zoom range come raw.

The query is written once, as a generator that yields ``(sql, params)`` and is
sent the rows back, so both backends run the same algorithm with their own I/O
(see :func:`history_plan`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from .base import (
    RAW_LIMIT,
    Dialect,
    Plan,
    Series,
    bucket_params,
    history_sql,
    series_from_agg,
    series_from_raw,
)

#: Block sizes, as shifts: blocks of 16, 128, 1,024 and 8,192 steps. Each is 8x
#: the one below, so a query picks a size between 1/8 of a bucket and a whole
#: bucket and reads at most 8 block rows per bucket. Migration 2 built the
#: rollup tables with these; changing them needs a migration that rebuilds.
ROLLUP_SHIFTS: tuple[int, ...] = (4, 7, 10, 13)

#: Series with at most this many points in range are bucketed exactly from
#: their points (bucket edges where the formula puts them); that costs a few
#: milliseconds at this size, so rollups only take over where they pay.
EXACT_POINTS = 20_000

#: The columns of a rollup row as migration 2 created it.
_V2_COLUMNS = (
    "run, key, level, block, n, smin, smax, vmin, vmax, fstep, fval, lstep, lval, "
    "rtmin, rtmax, tsmin, tsmax"
)
#: The columns of a rollup row, in table order (migration 4 appended ``nf``).
ROLLUP_COLUMNS = _V2_COLUMNS + ", nf"

#: One statement for a backend to run, and the rows it sends back.
Query: TypeAlias = tuple[str, list[Any]]
Rows: TypeAlias = Sequence[Sequence[Any]]

# The x-axis columns a rollup row holds a range of: (min column, max column).
# ``y`` is the queried key's block; for a metric x axis, ``x`` is the x key's
# block of the same level and number, whose value range is the x range.
_X_RANGE = {
    "step": ("y.smin", "y.smax"),
    "runtime": ("y.rtmin", "y.rtmax"),
    "ts": ("y.tsmin", "y.tsmax"),
    "metric": ("y.xlo", "y.xhi"),
}


def rollup_table(table: str) -> str:
    """The rollup table of a narrow table."""
    if table not in ("series", "system"):
        raise ValueError(f"unknown series table {table!r}")
    return f"{table}_rollup"


# --------------------------------------------------------------------------- maintenance


def refresh_ranges(steps: Iterable[int]) -> list[list[tuple[int, int]]]:
    """Per shift of :data:`ROLLUP_SHIFTS`, the runs of blocks (``(first, last)``) holding ``steps``.

    ``steps`` are the steps a batch wrote or deleted points at; every key the
    batch touched is refreshed over the same ranges (recomputing a block that
    did not change costs a little and is still exact). An in-order batch gives
    one range, so upkeep costs one statement per key and shift however many
    points the batch has.
    """
    blocks = sorted({step >> ROLLUP_SHIFTS[0] for step in steps})
    out = [_runs(blocks)]
    for p, s in itertools.pairwise(ROLLUP_SHIFTS):
        blocks = sorted({b >> (s - p) for b in blocks})
        out.append(_runs(blocks))
    return out


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in blocks:
        if out and out[-1][1] == b - 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out


def _level_select(table: str, i: int, where: str, nf: bool = True) -> str:
    """The SELECT of shift ``ROLLUP_SHIFTS[i]`` rows, over the source rows ``where`` picks.

    ``where`` may name ``src`` columns (the points, or the next finer blocks).
    ``nf=False`` leaves out the finite count, for migration 2's table.
    The first and last finite values are looked up by the source's primary
    key at the step that MIN/MAX found. Scalar subqueries rather than joins:
    a plan cannot turn them into a scan, even on a table not yet analyzed.
    """
    s = ROLLUP_SHIFTS[i]
    roll = rollup_table(table)
    if i == 0:
        inner = (
            f"SELECT src.run, src.key, src.step >> {s} AS block, COUNT(*) AS n, "
            "MIN(src.step) AS smin, MAX(src.step) AS smax, "
            "MIN(src.value) AS vmin, MAX(src.value) AS vmax, "
            "MIN(CASE WHEN src.value IS NOT NULL THEN src.step END) AS fstep, "
            "MAX(CASE WHEN src.value IS NOT NULL THEN src.step END) AS lstep, "
            "MIN(src.runtime) AS rtmin, MAX(src.runtime) AS rtmax, "
            "MIN(src.ts) AS tsmin, MAX(src.ts) AS tsmax"
            + (", COUNT(src.value) AS nf" if nf else "")
            + f" FROM {table} src WHERE {where} GROUP BY src.run, src.key, src.step >> {s}"
        )
        at = f"FROM {table} o WHERE o.run = g.run AND o.key = g.key AND o.step"
        fval = f"(SELECT o.value {at} = g.fstep)"
        lval = f"(SELECT o.value {at} = g.lstep)"
    else:
        p = ROLLUP_SHIFTS[i - 1]
        d = s - p
        inner = (
            f"SELECT src.run, src.key, src.block >> {d} AS block, SUM(src.n) AS n, "
            "MIN(src.smin) AS smin, MAX(src.smax) AS smax, "
            "MIN(src.vmin) AS vmin, MAX(src.vmax) AS vmax, "
            "MIN(src.fstep) AS fstep, MAX(src.lstep) AS lstep, "
            "MIN(src.rtmin) AS rtmin, MAX(src.rtmax) AS rtmax, "
            "MIN(src.tsmin) AS tsmin, MAX(src.tsmax) AS tsmax"
            + (", SUM(src.nf) AS nf" if nf else "")
            + f" FROM {roll} src WHERE src.level = {p} AND {where} "
            f"GROUP BY src.run, src.key, src.block >> {d}"
        )
        at = f"FROM {roll} o WHERE o.run = g.run AND o.key = g.key AND o.level = {p} AND o.block"
        fval = f"(SELECT o.fval {at} = g.fstep >> {p})"
        lval = f"(SELECT o.lval {at} = g.lstep >> {p})"
    return (
        f"SELECT g.run, g.key, {s}, g.block, g.n, g.smin, g.smax, g.vmin, g.vmax, "
        f"g.fstep, {fval}, g.lstep, {lval}, g.rtmin, g.rtmax, g.tsmin, g.tsmax"
        + (", g.nf" if nf else "")
        + f" FROM ({inner}) g"
    )


def _upsert(table: str, select: str, columns: str = ROLLUP_COLUMNS) -> str:
    # "WHERE true" lets SQLite's parser tell the upsert's ON CONFLICT from a join's ON.
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns.split(", ")[4:])
    return (
        f"INSERT INTO {rollup_table(table)} ({columns}) {select} WHERE true "
        f"ON CONFLICT (run, key, level, block) DO UPDATE SET {sets}"
    )


def _source_range(i: int, b0: str, b1: str) -> str:
    """The condition on ``src`` rows that fall in blocks ``b0..b1`` of shift i."""
    if i == 0:
        s = ROLLUP_SHIFTS[0]
        return f"src.step >= ({b0}) << {s} AND src.step < (({b1}) + 1) << {s}"
    d = ROLLUP_SHIFTS[i] - ROLLUP_SHIFTS[i - 1]
    return f"src.block >= ({b0}) << {d} AND src.block < (({b1}) + 1) << {d}"


@functools.cache
def refresh_sql(table: str, i: int, run: str, key: str, b0: str, b1: str) -> tuple[str, str]:
    """``(delete, upsert)`` that recompute blocks ``b0..b1`` of shift i of one (run, key).

    The arguments are SQL expressions (placeholders or columns). The upsert
    alone is enough when the batch only added or replaced points; the delete
    first drops blocks a deletion may have emptied.
    """
    s = ROLLUP_SHIFTS[i]
    delete = (
        f"DELETE FROM {rollup_table(table)} WHERE run = {run} AND key = {key} "
        f"AND level = {s} AND block >= {b0} AND block <= {b1}"
    )
    where = f"src.run = {run} AND src.key = {key} AND {_source_range(i, b0, b1)}"
    return delete, _upsert(table, _level_select(table, i, where))


@functools.cache
def refresh_unnest_sql(table: str, i: int) -> tuple[str, str]:
    """PostgreSQL: ``(delete, upsert)`` for many ranges in one statement each.

    Params: ``$1`` run, ``$2`` keys (int[]), ``$3``/``$4`` first/last blocks (bigint[]).
    """
    s = ROLLUP_SHIFTS[i]
    q = "unnest($2::int[], $3::bigint[], $4::bigint[]) AS q(key, b0, b1)"
    delete = (
        f"DELETE FROM {rollup_table(table)} r USING {q} WHERE r.run = $1 AND r.key = q.key "
        f"AND r.level = {s} AND r.block >= q.b0 AND r.block <= q.b1"
    )
    where = f"src.run = $1 AND src.key = q.key AND {_source_range(i, 'q.b0', 'q.b1')}"
    select = _level_select(table, i, where)
    # The per-range SELECT runs as a LATERAL subquery, so each range walks its
    # own stretch of the primary key.
    select = select.replace("FROM (", f"FROM {q} CROSS JOIN LATERAL (", 1)
    return delete, _upsert(table, select)


#: One point as a batch plan holds it: ``((key, step), (step, ts, runtime, value, kind))``.
PlanPoint: TypeAlias = tuple[tuple[str, int], tuple[int, float, float, float | None, int]]
#: A block's aggregates in table order, from ``n`` to ``nf``.
Agg: TypeAlias = list[Any]


@dataclass(frozen=True, slots=True)
class Upkeep:
    """What one batch asks of one narrow table's rollups.

    ``keys`` and ``steps`` cover every point written or deleted (the blocks
    to recompute when the batch is not a pure append); ``points`` are the
    points written, for the appending path.
    """

    table: str
    keys: set[str]
    steps: list[int]
    deleted: bool
    points: Iterable[PlanPoint]

    @property
    def lowest(self) -> int:
        """The lowest step the batch writes at."""
        return min(self.steps)


def upkeep(plan: Plan) -> list[Upkeep]:
    """The rollup upkeep of a planned batch, per narrow table it writes to."""
    out = []
    if plan.series or plan.deletes:
        keys = set(plan.row_keys)
        keys.update(k for k, _ in plan.deletes)
        steps = [*plan.row_steps, *(s for _, s in plan.deletes)]
        out.append(Upkeep("series", keys, steps, bool(plan.deletes), plan.series.items()))
    if plan.system:
        pts = [((k, i), (i, ts, rt, v, kind)) for k, i, ts, rt, v, kind in plan.system]
        out.append(Upkeep("system", set(plan.stats_keys), plan.stats_steps, False, pts))
    return out


def batch_blocks(points: Iterable[PlanPoint]) -> list[dict[tuple[str, int], Agg]]:
    """Per shift, ``{(key, block): aggregates}`` of a batch's points alone.

    The appending path of ingest: when none of the points was stored before,
    each block of the table becomes its old self merged with these (see
    :func:`merge_upsert_sql`), and no stored point is read again.
    """
    s0 = ROLLUP_SHIFTS[0]
    acc: dict[tuple[str, int], Agg] = {}
    for (k, step), (_, ts, rt, v, _) in points:
        kb = (k, step >> s0)
        a = acc.get(kb)
        if a is None:
            fs = None if v is None else step
            acc[kb] = [1, step, step, v, v, fs, v, fs, v, rt, rt, ts, ts, 0 if v is None else 1]
            continue
        a[0] += 1
        if step < a[1]:
            a[1] = step
        elif step > a[2]:
            a[2] = step
        if v is not None:
            a[13] += 1
            if a[5] is None:
                a[3] = a[4] = a[6] = a[8] = v
                a[5] = a[7] = step
            else:
                if v < a[3]:
                    a[3] = v
                elif v > a[4]:
                    a[4] = v
                if step < a[5]:
                    a[5], a[6] = step, v
                elif step > a[7]:
                    a[7], a[8] = step, v
        if rt < a[9]:
            a[9] = rt
        elif rt > a[10]:
            a[10] = rt
        if ts < a[11]:
            a[11] = ts
        elif ts > a[12]:
            a[12] = ts
    out = [acc]
    for p, s in itertools.pairwise(ROLLUP_SHIFTS):
        up: dict[tuple[str, int], Agg] = {}
        for (k, b), a in acc.items():
            kb = (k, b >> (s - p))
            u = up.get(kb)
            if u is None:
                up[kb] = list(a)
            else:
                _merge(u, a)
        out.append(up)
        acc = up
    return out


def _merge(u: Agg, a: Agg) -> None:
    """Fold block aggregates ``a`` into ``u`` (disjoint points), as the merge upsert does."""
    u[0] += a[0]
    u[1] = min(u[1], a[1])
    u[2] = max(u[2], a[2])
    if a[5] is not None:
        if u[5] is None:
            u[3:9] = a[3:9]
        else:
            u[3] = min(u[3], a[3])
            u[4] = max(u[4], a[4])
            if a[5] < u[5]:
                u[5], u[6] = a[5], a[6]
            if a[7] > u[7]:
                u[7], u[8] = a[7], a[8]
    u[9] = min(u[9], a[9])
    u[10] = max(u[10], a[10])
    u[11] = min(u[11], a[11])
    u[12] = max(u[12], a[12])
    u[13] += a[13]


def merge_upsert_sql(table: str, values: str) -> str:
    """INSERT of block rows ``values`` (a VALUES list or a SELECT) merged into stored blocks.

    Exact only when the new rows' points are disjoint from the stored ones
    (none of their steps was stored before); ingest checks that first.
    """
    t = rollup_table(table)

    def pick(cond: str, col: str) -> str:
        return f"{col} = CASE WHEN {cond} THEN EXCLUDED.{col} ELSE {t}.{col} END"

    f_cond = f"{t}.fstep IS NULL OR EXCLUDED.fstep < {t}.fstep"
    l_cond = f"{t}.lstep IS NULL OR EXCLUDED.lstep > {t}.lstep"
    sets = [
        f"n = {t}.n + EXCLUDED.n",
        pick(f"EXCLUDED.smin < {t}.smin", "smin"),
        pick(f"EXCLUDED.smax > {t}.smax", "smax"),
        # NULL (no finite value) loses to any number: a comparison with NULL
        # is not true, so the stored side is kept unless it is the NULL one.
        pick(f"{t}.vmin IS NULL OR EXCLUDED.vmin < {t}.vmin", "vmin"),
        pick(f"{t}.vmax IS NULL OR EXCLUDED.vmax > {t}.vmax", "vmax"),
        pick(f_cond, "fstep"),
        pick(f_cond, "fval"),
        pick(l_cond, "lstep"),
        pick(l_cond, "lval"),
        pick(f"EXCLUDED.rtmin < {t}.rtmin", "rtmin"),
        pick(f"EXCLUDED.rtmax > {t}.rtmax", "rtmax"),
        pick(f"EXCLUDED.tsmin < {t}.tsmin", "tsmin"),
        pick(f"EXCLUDED.tsmax > {t}.tsmax", "tsmax"),
        f"nf = {t}.nf + EXCLUDED.nf",
    ]
    return (
        f"INSERT INTO {t} ({ROLLUP_COLUMNS}) {values} "
        f"ON CONFLICT (run, key, level, block) DO UPDATE SET {', '.join(sets)}"
    )


def backfill_sql(table: str, nf: bool = True) -> list[str]:
    """Statements that build every rollup row of a narrow table from scratch.

    Migration 2 ran them with ``nf=False`` (its table has no finite count);
    migration 4 runs them again to fill the ``nf`` column it adds.
    """
    columns = ROLLUP_COLUMNS if nf else _V2_COLUMNS
    return [
        _upsert(table, _level_select(table, i, "true", nf), columns)
        for i in range(len(ROLLUP_SHIFTS))
    ]


def add_nf_sql(table: str, sqlite: bool) -> str:
    """ALTER TABLE adding the finite count to a rollup table (migration 4).

    The default only lets the column be added to existing rows; the backfill
    that follows in the same migration overwrites every row.
    """
    kind = "INTEGER" if sqlite else "BIGINT"
    return f"ALTER TABLE {rollup_table(table)} ADD COLUMN nf {kind} NOT NULL DEFAULT 0"


def rollup_schema(table: str, sqlite: bool) -> str:
    """CREATE TABLE of a rollup table (migration 2)."""
    if sqlite:
        i, r, tail = "INTEGER", "REAL", " WITHOUT ROWID"
    else:
        i, r, tail = "BIGINT", "DOUBLE PRECISION", ""
    return (
        f"CREATE TABLE {rollup_table(table)} ("
        f"run {i} NOT NULL, key INTEGER NOT NULL, level SMALLINT NOT NULL, block {i} NOT NULL, "
        f"n {i} NOT NULL, smin {i} NOT NULL, smax {i} NOT NULL, vmin {r}, vmax {r}, "
        f"fstep {i}, fval {r}, lstep {i}, lval {r}, rtmin {r} NOT NULL, rtmax {r} NOT NULL, "
        f"tsmin {r} NOT NULL, tsmax {r} NOT NULL, "
        f"PRIMARY KEY (run, key, level, block)){tail}"
    )


# --------------------------------------------------------------------------- query


def history_plan(
    d: Dialect,
    table: str,
    x_kind: str,
    x_name: str,
    *,
    run_id: str,
    key: str,
    rid: int,
    kid: int,
    xkid: int | None,
    buckets: int,
    x_min: float | None,
    x_max: float | None,
    after: int | None,
    exact_points: int,
) -> Generator[Query, Rows, Series | None]:
    """One (run, key) history query: yields statements, is sent their rows, returns the Series.

    None when the range holds no points. Order of work: the live cursor reads
    raw points; otherwise the coarsest blocks tell how many points the range
    can hold; few (at most ``max(exact_points, buckets)``) go to the exact path
    (raw points, or one GROUP BY over them, buckets where the formula puts
    them), many to :func:`_rollup_history` (whole blocks per bucket), which
    hands back to the exact path where blocks cannot stay exact (an x axis
    whose blocks overlap in x, a metric x axis not logged at the same steps,
    or buckets narrower than the finest block).
    """
    q = history_sql(
        d, table, x_kind, x_name, rid=rid, kid=kid, xkid=xkid, x_min=x_min, x_max=x_max, after=after
    )
    if after is not None:
        rows = yield q.raw, [*q.params, RAW_LIMIT]
        return series_from_raw(run_id, key, rows) if rows else None
    if x_kind == "col" or xkid is not None:
        fast = yield from _rollup_history(
            d,
            table,
            x_name if x_kind == "col" else "metric",
            run_id=run_id,
            key=key,
            rid=rid,
            kid=kid,
            xkid=xkid,
            buckets=buckets,
            x_min=x_min,
            x_max=x_max,
            exact_points=exact_points,
        )
        if fast is _EMPTY:
            return None
        if isinstance(fast, Series):
            if sum(fast.count) > buckets:
                return fast
            rows = yield q.raw, [*q.params, RAW_LIMIT]
            return series_from_raw(run_id, key, rows)
    counted = yield q.count, q.params
    n, lo, hi, _ = counted[0]
    if not n:
        return None
    if n <= buckets:
        rows = yield q.raw, [*q.params, RAW_LIMIT]
        return series_from_raw(run_id, key, rows)
    b_lo, b_n, b_w = bucket_params(
        x_kind == "col" and x_name == "step",
        lo if x_min is None else x_min,
        hi if x_max is None else x_max,
        buckets,
    )
    rows = yield q.agg, [*q.params, b_lo, b_n, b_w]
    return series_from_agg(run_id, key, rows)


_EMPTY = object()  # the range holds no points
_FALLBACK = object()  # the exact path must answer


def _rollup_history(
    d: Dialect,
    table: str,
    x_name: str,
    *,
    run_id: str,
    key: str,
    rid: int,
    kid: int,
    xkid: int | None,
    buckets: int,
    x_min: float | None,
    x_max: float | None,
    exact_points: int,
) -> Generator[Query, Rows, object]:
    """Whole blocks per bucket: a downsampled Series, ``_EMPTY`` or ``_FALLBACK``.

    Blocks are assigned to the bucket of their smallest x, which keeps every
    bucket exact and contiguous only where blocks do not overlap in x: always
    for ``_step``, checked for ``_runtime``/``_timestamp`` and a metric
    (``x_name`` ``"metric"``, key id ``xkid``). Blocks that stick out of a
    zoom range are replaced by their points in range.

    A metric's x range per block is its own block's vmin/vmax, which is the x
    range of the queried key's points only when both keys hold points at the
    same steps with a finite x at each. The blocks cannot show the steps
    inside, so the test is per block: the same count, lowest and highest step
    (two keys of one ``log()`` call always pass), and for a block used whole,
    every x finite (the x block's ``nf`` equals its ``n``; an edge block's
    points come raw, so a non-finite x there drops out as on the exact path).
    A queried block with no x block at all is left out, as the exact path
    leaves out its points (they have no x).
    """
    is_step = x_name == "step"
    is_metric = x_name == "metric"
    xlo_col, xhi_col = _X_RANGE[x_name]
    roll = rollup_table(table)

    def source(params: list[Any]) -> str:
        """The FROM clause: ``y`` blocks, for a metric with their x block's range.

        ``xlo``/``xhi`` are NULL where the x block covers other steps (or no
        finite x); ``xnf`` is the x block's count of finite values; blocks
        with no x block at all are left out. Scalar lookups rather than a join
        (PostgreSQL turns EXISTS into one too), so no plan can scan the x
        side, analyzed or not; a query that does not name ``xnf`` does not
        run its lookup.
        """
        if not is_metric:
            return f"{roll} y"
        xk = d.param(params, xkid)
        at = (
            f"FROM {roll} x WHERE x.run = r.run AND x.key = {xk} AND x.level = r.level "
            "AND x.block = r.block"
        )
        same = "AND x.n = r.n AND x.smin = r.smin AND x.smax = r.smax"
        return (
            "(SELECT r.run, r.key, r.level, r.block, r.n, r.smin, r.smax, r.vmin, r.vmax, "
            f"r.fstep, r.lstep, (SELECT x.vmin {at} {same}) AS xlo, "
            f"(SELECT x.vmax {at} {same}) AS xhi, (SELECT x.nf {at}) AS xnf "
            f"FROM {roll} r WHERE (SELECT 1 {at}) = 1) y"
        )

    # The bounds the exact path filters with (history_sql), so both agree on
    # which points are in range.
    f_lo: float | None = None
    f_hi: float | None = None
    if x_min is not None:
        f_lo = math.ceil(x_min) if is_step else float(x_min)
    if x_max is not None:
        f_hi = math.floor(x_max) if is_step else float(x_max)

    def reaches(col: str, op: str, p: str) -> str:
        """``col op p``; for a metric, also true where the x range is unknown (NULL).

        Such a block must stay in the query so that it sends it to the exact
        path: dropping it would drop its points in range.
        """
        return f"({col} IS NULL OR {col} {op} {p})" if is_metric else f"{col} {op} {p}"

    # The coarsest blocks overlapping the range: (n, smin, smax, x lo, x hi).
    params: list[Any] = []
    sql = f"SELECT y.n, y.smin, y.smax, {xlo_col}, {xhi_col} FROM {source(params)} "
    sql += (
        f"WHERE y.run = {d.param(params, rid)} AND y.key = {d.param(params, kid)} "
        f"AND y.level = {d.param(params, ROLLUP_SHIFTS[-1])}"
    )
    if f_lo is not None:
        sql += f" AND {reaches(xhi_col, '>=', d.param(params, f_lo))}"
    if f_hi is not None:
        sql += f" AND {reaches(xlo_col, '<=', d.param(params, f_hi))}"
    top = yield sql + " ORDER BY y.block", params
    if not top:
        return _EMPTY
    if sum(int(r[0]) for r in top) <= max(exact_points, buckets):
        return _FALLBACK
    if is_metric and any(r[3] is None for r in top):
        return _FALLBACK  # an x block over other steps, or without a finite value
    if not is_step and not _disjoint(top):
        return _FALLBACK
    s_lo = min(int(r[1]) for r in top)
    s_hi = max(int(r[2]) for r in top)
    if is_step:
        if f_lo is not None:
            s_lo = max(s_lo, int(f_lo))
        if f_hi is not None:
            s_hi = min(s_hi, int(f_hi))
    per_bucket = (s_hi - s_lo + 1) / buckets
    fits = [s for s in ROLLUP_SHIFTS if (1 << s) <= per_bucket]
    if not fits:
        return _FALLBACK
    shift = fits[-1]
    lo = float(x_min) if x_min is not None else min(float(r[3]) for r in top)
    hi = float(x_max) if x_max is not None else max(float(r[4]) for r in top)
    b_lo, b_n, b_w = bucket_params(is_step, lo, hi, buckets)

    def where(params: list[Any]) -> tuple[str, str]:
        """(the level's blocks that overlap the range, the condition: wholly inside it)."""
        overlap = (
            f"y.run = {d.param(params, rid)} AND y.key = {d.param(params, kid)} "
            f"AND y.level = {d.param(params, shift)} "
            f"AND y.block >= {d.param(params, s_lo >> shift)} "
            f"AND y.block <= {d.param(params, s_hi >> shift)}"
        )
        inside = []
        if f_lo is not None:
            p = d.param(params, f_lo)
            overlap += f" AND {reaches(xhi_col, '>=', p)}"
            inside.append(f"{xlo_col} >= {p}")
        if f_hi is not None:
            p = d.param(params, f_hi)
            overlap += f" AND {reaches(xlo_col, '<=', p)}"
            inside.append(f"{xhi_col} <= {p}")
        return overlap, " AND ".join(inside) or "1 = 1"

    edges: list[int] = []
    if not is_step or f_lo is not None or f_hi is not None:
        # The blocks sticking out of the range (their points in range come
        # raw), and for x other than the step, any block whose x range starts
        # at or below the end of the one before: then blocks cannot make
        # contiguous buckets; for a metric, also any x block that does not
        # cover the same steps, and any block used whole whose x block holds
        # a non-finite value (that step drops out of the series, and blocks
        # cannot tell which it is). Past two such rows the answer is the
        # exact path.
        params = []
        src = source(params)
        overlap, inside = where(params)
        bad = "0"
        if not is_step:
            bad = f"{xlo_col} <= LAG({xhi_col}) OVER (ORDER BY y.block)"
            if is_metric:
                bad += f" OR {xlo_col} IS NULL OR (y.xnf < y.n AND {inside})"
            bad = f"CASE WHEN {bad} THEN 1 ELSE 0 END"
        odd = yield (
            f"SELECT block, inside, bad FROM (SELECT y.block AS block, {bad} AS bad, "
            f"CASE WHEN {inside} THEN 1 ELSE 0 END AS inside FROM {src} WHERE {overlap}"
            ") w WHERE inside = 0 OR bad = 1 ORDER BY block LIMIT 3",
            params,
        )
        if len(odd) > 2 or any(r[2] for r in odd):
            return _FALLBACK
        edges = [int(r[0]) for r in odd]
    params = []
    src = source(params)
    overlap, inside = where(params)
    blo, bn, bw = (d.param(params, v) for v in (b_lo, b_n, b_w))
    bucket_sql = (
        f"((({xlo_col} - {blo}) * {bn}) / {bw})"
        if is_step
        else d.bucket_float(xlo_col, blo, bn, bw)
    )
    r, k, lv = (d.param(params, v) for v in (rid, kid, shift))
    agg = yield (
        f"WITH g AS (SELECT {bucket_sql} AS b, MIN({xlo_col}) AS x0, SUM(y.n) AS n, "
        "MIN(y.vmin) AS vmin, MAX(y.vmax) AS vmax, MIN(y.fstep) AS fstep, "
        f"MAX(y.lstep) AS lstep, MAX(y.smax) AS smax FROM {src} WHERE {overlap} AND {inside} "
        "GROUP BY 1) "
        "SELECT g.b, g.x0, g.n, g.vmin, g.vmax, g.fstep, "
        f"(SELECT f.fval FROM {roll} f WHERE f.run = {r} AND f.key = {k} AND f.level = {lv} "
        f"AND f.block = g.fstep >> {shift}), g.lstep, "
        f"(SELECT l.lval FROM {roll} l WHERE l.run = {r} AND l.key = {k} AND l.level = {lv} "
        f"AND l.block = g.lstep >> {shift}), g.smax FROM g",
        params,
    )
    # bucket -> [x, count, min, max, first step, first, last step, last]
    acc: dict[int, list[Any]] = {int(a[0]): [a[1], int(a[2]), *a[3:9]] for a in agg}
    cursor = max((int(a[9]) for a in agg), default=None)
    if edges:
        if is_step:

            def bucket(x: float) -> int:
                return int(((int(x) - b_lo) * b_n) // b_w)

        else:
            x_lo, x_w = float(b_lo), float(b_w)

            def bucket(x: float) -> int:
                return min(b_n - 1, math.floor(((x - x_lo) * b_n) / x_w))

        for block in edges:
            raw = yield _edge_points(d, table, x_name, rid, kid, xkid, block, shift, f_lo, f_hi)
            for x, v, step in raw:
                step = int(step)
                cursor = step if cursor is None else max(cursor, step)
                a = acc.setdefault(bucket(x), [x, 0, None, None, None, None, None, None])
                a[0] = min(a[0], x)
                a[1] += 1
                if v is None:
                    continue
                if a[2] is None or v < a[2]:
                    a[2] = v
                if a[3] is None or v > a[3]:
                    a[3] = v
                if a[4] is None or step < a[4]:
                    a[4], a[5] = step, v
                if a[6] is None or step > a[6]:
                    a[6], a[7] = step, v
    if not acc:
        return _EMPTY
    out = Series(run_id, key, downsampled=True, cursor=cursor)
    for b in sorted(acc):
        x0, n, vmin, vmax, _, first, _, last = acc[b]
        out.x.append(x0)
        out.count.append(n)
        out.min.append(vmin)
        out.max.append(vmax)
        out.first.append(first)
        out.last.append(last)
    return out


def _edge_points(
    d: Dialect,
    table: str,
    x_name: str,
    rid: int,
    kid: int,
    xkid: int | None,
    block: int,
    shift: int,
    f_lo: float | None,
    f_hi: float | None,
) -> Query:
    """``(x, value, step)`` of a block's points inside the zoom range, by step."""
    params: list[Any] = []
    src = f"{table} s"
    x = f"s.{x_name}"
    if x_name == "metric":
        # The x value by a lookup on the primary key (not a join: see source()).
        src = (
            f"(SELECT s.run, s.key, s.step, s.value, (SELECT m.value FROM {table} m "
            f"WHERE m.run = s.run AND m.key = {d.param(params, xkid)} AND m.step = s.step) "
            f"AS metric FROM {table} s) s"
        )
    where = (
        f"s.run = {d.param(params, rid)} AND s.key = {d.param(params, kid)} "
        f"AND s.step >= {d.param(params, int(block) << shift)} "
        f"AND s.step < {d.param(params, (int(block) + 1) << shift)}"
    )
    where += f" AND {x} IS NOT NULL"
    if f_lo is not None:
        where += f" AND {x} >= {d.param(params, f_lo)}"
    if f_hi is not None:
        where += f" AND {x} <= {d.param(params, f_hi)}"
    return f"SELECT {x}, s.value, s.step FROM {src} WHERE {where} ORDER BY s.step", params


def _disjoint(rows: Rows) -> bool:
    """Whether top block rows (in block order) cover strictly increasing x ranges."""
    prev: float | None = None
    for r in rows:
        if prev is not None and not r[3] > prev:
            return False
        prev = r[4]
    return True
