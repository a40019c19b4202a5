"""The SQLite store: the stdlib ``sqlite3`` module on one dedicated worker thread.

One connection, owned by one thread, does every read and write. SQLite allows
one writer at a time anyway, so a single thread loses nothing on writes, keeps
the event loop free while a query runs, and serialises batches for the same
run without any lock of ours. WAL mode lets the connection read while a
checkpoint runs; ``synchronous=NORMAL`` in WAL mode is durable against a
process crash (a power loss may drop the last transactions, never corrupt).

A coroutine that is cancelled while its call runs on the worker does not stop
the call: a batch is one transaction, so it either commits whole or not at all.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pipeline.jsoncodec import dumps as _dumps
from pipeline.jsoncodec import loads as _loads

from . import migrations
from .base import (
    EventTuple,
    FileRecord,
    Filter,
    OutputLine,
    ProjectRecord,
    RunNotFoundError,
    RunRecord,
    RunState,
    Series,
    Source,
    StoreClosedError,
    check_run_fields,
    check_values_limit,
    filter_sql,
    needs_json,
    new_events,
    order_sql,
    plan_batch,
    run_keys_sql,
    state_expr,
    values_page,
    x_axis,
)
from .rollup import (
    EXACT_POINTS,
    ROLLUP_SHIFTS,
    Upkeep,
    batch_blocks,
    history_plan,
    merge_upsert_sql,
    refresh_ranges,
    refresh_sql,
    upkeep,
)

T = TypeVar("T")


def _dumps_str(v: Any) -> str:
    return _dumps(v).decode()


class SqliteDialect:
    """SQLite spellings for the shared query builders (numbered ``?N`` params)."""

    def param(self, params: list[Any], value: Any) -> str:
        params.append(value)
        return f"?{len(params)}"

    def json_path(self, params: list[Any], column: str, path: list[str]) -> tuple[str, str, str]:
        for seg in path:
            if '"' in seg:
                raise ValueError(f"field {column}.{'.'.join(path)}: a key may not contain '\"'")
        p = self.param(params, "$" + "".join(f'."{seg}"' for seg in path))
        typ = (
            f"(CASE json_type({column}, {p}) WHEN 'integer' THEN 'num' WHEN 'real' THEN 'num' "
            f"WHEN 'text' THEN 'str' ELSE json_type({column}, {p}) END)"
        )
        val = f"json_extract({column}, {p})"
        return typ, val, val

    def tags_contains(self, params: list[Any], value: str) -> str:
        p = self.param(params, value)
        return f"EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE json_each.value = {p})"

    def substr(self, text_expr: str, needle: str) -> str:
        return f"(instr({text_expr}, {needle}) > 0)"

    def collate(self, text_expr: str) -> str:
        # SQLite's default BINARY collation already compares code points.
        return text_expr

    def bucket_float(self, x: str, lo: str, n: str, width: str) -> str:
        return f"MIN({n} - 1, CAST((({x} - {lo}) * {n}) / {width} AS INTEGER))"


_D = SqliteDialect()
_RUN_COLS = (
    "project, run_id, name, {state}, config, summary, metadata, metrics, tags, "
    "group_name, notes, created, heartbeat_ts, finished_ts, exit_code, last_seq"
)


def _record(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        project=row[0],
        run_id=row[1],
        name=row[2],
        state=row[3],
        config=_loads(row[4]),
        summary=_loads(row[5]),
        metadata=_loads(row[6]),
        metrics=_loads(row[7]),
        tags=_loads(row[8]),
        group=row[9],
        notes=row[10],
        created=row[11],
        heartbeat_ts=row[12],
        finished_ts=row[13],
        exit_code=row[14],
        last_seq=row[15],
    )


class SqliteStore:
    """A :class:`~server.store.base.Store` in one SQLite file. Open with :meth:`open`.

    ``stale_after``: seconds without events after which a running run reads as
    crashed. ``clock``: the time source for heartbeats and staleness (tests
    inject one). ``exact_points``: a history range with at most this many
    points is bucketed exactly from its points, a larger one from rollup
    blocks (see :mod:`server.store.rollup`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        stale_after: float = 120.0,
        clock: Callable[[], float] = time.time,
        exact_points: int = EXACT_POINTS,
    ) -> None:
        self.path = str(path)
        self.stale_after = stale_after
        self.clock = clock
        self.exact_points = exact_points
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="runbus-sqlite"
        )
        self._conn: sqlite3.Connection | None = None
        # Key name -> id; ids never change once committed, so the cache never
        # goes stale. Only the worker thread touches it.
        self._keys: dict[str, int] = {}

    @classmethod
    async def open(cls, path: str | Path, **kwargs: Any) -> SqliteStore:
        """Open (creating if needed) the database at ``path`` and migrate it."""
        store = cls(path, **kwargs)
        try:
            await store._call(store._connect)
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._pool
        if pool is None:
            raise StoreClosedError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread; idempotent."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(pool, self._disconnect)
        finally:
            pool.shutdown(wait=False)

    # ------------------------------------------------------------ worker side

    def _connect(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is
        # exactly one transaction.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        # Memory stays bounded whatever the database holds: a 16 MiB page
        # cache, no mmap (mapped pages count in the server's RSS once touched,
        # up to the whole mapping), and sorts too big for the cache spill to a
        # temporary file. History reads rollup blocks, a few hundred pages at
        # most, so a bigger cache or mmap bought nothing measurable.
        conn.execute("PRAGMA cache_size=-16384")
        conn.execute("PRAGMA mmap_size=0")
        conn.execute("PRAGMA temp_store=FILE")
        self._conn = conn
        self._migrate()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosedError("the store is closed")
        return self._conn

    def _migrate(self) -> None:
        conn = self._db()
        conn.execute(migrations.SCHEMA_VERSION_SQLITE)
        for m in migrations.MIGRATIONS:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-read under the write lock: another process may have migrated.
                done = conn.execute(
                    "SELECT 1 FROM schema_version WHERE version = ?", (m.version,)
                ).fetchone()
                if done is None:
                    for stmt in migrations.statements(m.sqlite):
                        conn.execute(stmt)
                    conn.execute(
                        "INSERT INTO schema_version VALUES (?, ?, ?)",
                        (m.version, m.description, time.time()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _schema_versions(self) -> list[int]:
        rows = self._db().execute("SELECT version FROM schema_version ORDER BY version")
        return [r[0] for r in rows]

    def _key_ids(self, names: set[str], new: dict[str, int]) -> dict[str, int]:
        """Ids for ``names``, creating missing ones (recorded in ``new`` until commit)."""
        conn = self._db()
        out: dict[str, int] = {}
        for name in names:
            kid = self._keys.get(name)
            if kid is None:
                conn.execute("INSERT OR IGNORE INTO keys (name) VALUES (?)", (name,))
                kid = conn.execute("SELECT id FROM keys WHERE name = ?", (name,)).fetchone()[0]
                new[name] = kid
            out[name] = kid
        return out

    def _lookup_keys(self, names: Sequence[str]) -> dict[str, int]:
        conn = self._db()
        out: dict[str, int] = {}
        for name in names:
            kid = self._keys.get(name)
            if kid is None:
                row = conn.execute("SELECT id FROM keys WHERE name = ?", (name,)).fetchone()
                if row is None:
                    continue
                kid = self._keys[name] = row[0]
            out[name] = kid
        return out

    def _upsert_run(
        self,
        project: str,
        run_id: str,
        name: str | None,
        config: dict[str, Any] | None,
        tags: Sequence[str] | None,
        group: str | None,
        notes: str | None,
        metadata: dict[str, Any] | None,
        state: str,
    ) -> RunRecord:
        conn = self._db()
        now = self.clock()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT id, config, metadata FROM runs WHERE project = ? AND run_id = ?",
                (project, run_id),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO runs (project, run_id, name, group_name, notes, tags, config, "
                    "metadata, state, created, heartbeat_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        project,
                        run_id,
                        name,
                        group,
                        notes,
                        _dumps_str(list(tags or [])),
                        _dumps_str(config or {}),
                        _dumps_str(metadata or {}),
                        state,
                        now,
                        now,
                    ),
                )
            else:
                # Resume: keep what is not given; config and metadata merge
                # top-level, as their events do.
                conn.execute(
                    "UPDATE runs SET name = coalesce(?, name), "
                    "group_name = coalesce(?, group_name), "
                    "notes = coalesce(?, notes), tags = coalesce(?, tags), config = ?, "
                    "metadata = ?, state = ?, heartbeat_ts = ?, "
                    "exit_code = CASE WHEN ? = 'running' THEN NULL ELSE exit_code END, "
                    "finished_ts = CASE WHEN ? = 'running' THEN NULL ELSE finished_ts END "
                    "WHERE id = ?",
                    (
                        name,
                        group,
                        notes,
                        None if tags is None else _dumps_str(list(tags)),
                        _dumps_str({**_loads(row[1]), **(config or {})}),
                        _dumps_str({**_loads(row[2]), **(metadata or {})}),
                        state,
                        now,
                        state,
                        state,
                        row[0],
                    ),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        rec = self._get_run(project, run_id)
        assert rec is not None
        return rec

    def _append(self, project: str, run_id: str, events: Sequence[EventTuple]) -> int:
        conn = self._db()
        want_json = needs_json(events)
        cols = "id, last_seq, state, partial_step, partial_keys, stats_count, output_lines"
        if want_json:
            cols += ", config, summary, metadata, metrics"
        new_keys: dict[str, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                f"SELECT {cols} FROM runs WHERE project = ? AND run_id = ?", (project, run_id)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(project, run_id)
            fresh = new_events(project, run_id, row[1], events)
            if not fresh:
                conn.execute("ROLLBACK")
                return int(row[1])
            rid = row[0]
            state = RunState(
                rid=rid,
                last_seq=row[1],
                state=row[2],
                partial_step=row[3],
                partial_keys=_loads(row[4]),
                stats_count=row[5],
                output_lines=row[6],
                config=_loads(row[7]) if want_json else None,
                summary=_loads(row[8]) if want_json else None,
                metadata=_loads(row[9]) if want_json else None,
                metrics=_loads(row[10]) if want_json else None,
            )
            plan = plan_batch(state, fresh, _dumps_str)
            names = plan.row_keys | plan.stats_keys
            names.update(k for k, _ in plan.deletes)
            ids = self._key_ids(names, new_keys)
            if plan.deletes:
                dels = [(rid, ids[k], step) for k, step in plan.deletes]
                conn.executemany("DELETE FROM series WHERE run = ? AND key = ? AND step = ?", dels)
                conn.executemany(
                    "DELETE FROM row_values WHERE run = ? AND key = ? AND step = ?", dels
                )
            work = upkeep(plan)
            # Decided before the points go in: does the batch only add points?
            appends = {u.table: self._appends(u, rid, ids) for u in work}
            if plan.series:
                verb = "INSERT" if appends["series"] else "INSERT OR REPLACE"
                conn.executemany(
                    f"{verb} INTO series VALUES (?,?,?,?,?,?,?)",
                    [(rid, ids[k], *v) for (k, _), v in plan.series.items()],
                )
            if plan.values:
                conn.executemany(
                    "INSERT OR REPLACE INTO row_values VALUES (?,?,?,?)",
                    [(rid, ids[k], *v) for (k, _), v in plan.values.items()],
                )
            if plan.system:
                verb = "INSERT" if appends["system"] else "INSERT OR REPLACE"
                conn.executemany(
                    f"{verb} INTO system VALUES (?,?,?,?,?,?,?)",
                    [(rid, ids[s[0]], *s[1:]) for s in plan.system],
                )
            for u in work:
                self._update_rollups(u, rid, ids, appends[u.table])
            if plan.output:
                conn.executemany(
                    "INSERT OR REPLACE INTO output VALUES (?,?,?,?,?)",
                    [(rid, *o) for o in plan.output],
                )
            if plan.files:
                conn.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?)",
                    [(rid, *f) for f in plan.files],
                )
            sets = [
                "last_seq = ?",
                "heartbeat_ts = ?",
                "partial_step = ?",
                "partial_keys = ?",
                "stats_count = ?",
                "output_lines = ?",
            ]
            args: list[Any] = [
                plan.last_seq,
                self.clock(),
                plan.partial_step,
                _dumps_str(plan.partial_keys),
                plan.stats_count,
                plan.output_lines,
            ]
            for col in ("config", "summary", "metadata", "metrics"):
                val = getattr(plan, col)
                if val is not None:
                    sets.append(f"{col} = ?")
                    args.append(_dumps_str(val))
            if plan.state is not None:
                sets += ["state = ?", "exit_code = ?", "finished_ts = ?"]
                args += [plan.state, plan.exit_code, plan.finished_ts]
            args.append(rid)
            conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._keys.update(new_keys)
        return plan.last_seq

    def _appends(self, u: Upkeep, rid: int, ids: dict[str, int]) -> bool:
        """Whether the batch only adds points to ``u.table``: none deleted, none replaced.

        Conservative: any stored point of these keys at or above the batch's
        lowest step says no.
        """
        if u.deleted:
            return False
        # The key ids as one JSON parameter: a batch may hold more keys than
        # SQLite allows parameters.
        kids = _dumps_str([ids[k] for k in u.keys])
        row = (
            self._db()
            .execute(
                f"SELECT 1 FROM {u.table} WHERE run = ? "
                "AND key IN (SELECT value FROM json_each(?)) AND step >= ? LIMIT 1",
                (rid, kids, u.lowest),
            )
            .fetchone()
        )
        return row is None

    def _update_rollups(self, u: Upkeep, rid: int, ids: dict[str, int], appends: bool) -> None:
        """Bring ``u.table``'s rollup blocks up to date with the batch just written."""
        conn = self._db()
        if appends:
            # Merge the batch's own block aggregates into the stored blocks.
            conn.executemany(
                merge_upsert_sql(u.table, f"VALUES ({','.join('?' * 18)})"),
                [
                    (rid, ids[k], shift, b, *a)
                    for shift, level in zip(ROLLUP_SHIFTS, batch_blocks(u.points), strict=True)
                    for (k, b), a in level.items()
                ],
            )
            return
        kids = [ids[k] for k in u.keys]
        for i, ranges in enumerate(refresh_ranges(u.steps)):
            delete, refresh = refresh_sql(u.table, i, "?1", "?2", "?3", "?4")
            args = [(rid, kid, b0, b1) for kid in kids for b0, b1 in ranges]
            if u.deleted:
                # A deletion may have emptied a block, which no upsert removes.
                conn.executemany(delete, args)
            conn.executemany(refresh, args)

    def _last_seq(self, project: str, run_id: str) -> int:
        row = (
            self._db()
            .execute(
                "SELECT last_seq FROM runs WHERE project = ? AND run_id = ?", (project, run_id)
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def _list_projects(self) -> list[ProjectRecord]:
        rows = self._db().execute(
            "SELECT project, COUNT(*), MAX(heartbeat_ts) FROM runs "
            "GROUP BY project ORDER BY project"
        )
        return [ProjectRecord(r[0], r[1], r[2]) for r in rows]

    def _get_run(self, project: str, run_id: str) -> RunRecord | None:
        params: list[Any] = []
        st = state_expr(self.clock() - self.stale_after)
        p1 = _D.param(params, project)
        p2 = _D.param(params, run_id)
        row = (
            self._db()
            .execute(
                f"SELECT {_RUN_COLS.format(state=st)} FROM runs "
                f"WHERE project = {p1} AND run_id = {p2}",
                params,
            )
            .fetchone()
        )
        return None if row is None else _record(row)

    def _list_runs(
        self, project: str, filters: Sequence[Filter], sort: str, limit: int, offset: int
    ) -> tuple[list[RunRecord], int]:
        params: list[Any] = []
        st = state_expr(self.clock() - self.stale_after)
        conds = [f"project = {_D.param(params, project)}"]
        conds += [filter_sql(_D, params, f, st) for f in filters]
        where = " AND ".join(conds)
        conn = self._db()
        # Count before ORDER BY adds its params: a statement must get exactly its own.
        total = conn.execute(f"SELECT COUNT(*) FROM runs WHERE {where}", params).fetchone()[0]
        order = order_sql(_D, params, sort, st)
        lim = _D.param(params, int(limit))
        off = _D.param(params, int(offset))
        rows = conn.execute(
            f"SELECT {_RUN_COLS.format(state=st)} FROM runs WHERE {where} "
            f"ORDER BY {order} LIMIT {lim} OFFSET {off}",
            params,
        ).fetchall()
        return [_record(r) for r in rows], int(total)

    def _history(
        self,
        project: str,
        run_ids: Sequence[str],
        keys: Sequence[str],
        x: str,
        buckets: int,
        x_min: float | None,
        x_max: float | None,
        after: int | None,
        source: Source,
    ) -> dict[tuple[str, str], Series]:
        table = "series" if source == "history" else "system"
        x_kind, x_name = x_axis(x)
        conn = self._db()
        out: dict[tuple[str, str], Series] = {}
        if not run_ids or not keys:
            return out
        marks = ",".join("?" * len(run_ids))
        runs = conn.execute(
            f"SELECT id, run_id FROM runs WHERE project = ? AND run_id IN ({marks})",
            (project, *run_ids),
        ).fetchall()
        kids = self._lookup_keys([*keys, x_name] if x_kind == "metric" else keys)
        xkid = kids.get(x_name) if x_kind == "metric" else None
        if x_kind == "metric" and xkid is None:
            return out
        for rid, run_id in runs:
            for key in keys:
                kid = kids.get(key)
                if kid is None:
                    continue
                plan = history_plan(
                    _D,
                    table,
                    x_kind,
                    x_name,
                    run_id=run_id,
                    key=key,
                    rid=rid,
                    kid=kid,
                    xkid=xkid,
                    buckets=buckets,
                    x_min=x_min,
                    x_max=x_max,
                    after=after,
                    exact_points=self.exact_points,
                )
                try:
                    sql, params = next(plan)
                    while True:
                        sql, params = plan.send(conn.execute(sql, params).fetchall())
                except StopIteration as done:
                    if done.value is not None:
                        out[(run_id, key)] = done.value
        return out

    def _rid(self, project: str, run_id: str) -> int | None:
        row = (
            self._db()
            .execute("SELECT id FROM runs WHERE project = ? AND run_id = ?", (project, run_id))
            .fetchone()
        )
        return None if row is None else int(row[0])

    def _run_keys(self, project: str, run_id: str) -> dict[str, list[str]]:
        rid = self._rid(project, run_id)
        out: dict[str, list[str]] = {}
        for name, table in (("history", "series"), ("values", "row_values"), ("system", "system")):
            if rid is None:
                out[name] = []
                continue
            sql, params = run_keys_sql(_D, table, rid)
            out[name] = sorted(r[0] for r in self._db().execute(sql, params))
        return out

    def _values(
        self, project: str, run_id: str, keys: Sequence[str], after_step: int | None, limit: int
    ) -> list[tuple[str, int, Any]]:
        rid = self._rid(project, run_id)
        if rid is None:
            return []
        conn = self._db()
        after = -(2**63) if after_step is None else int(after_step)
        rows: list[tuple[str, int, Any]] = []
        for key, kid in self._lookup_keys(list(dict.fromkeys(keys))).items():
            for step, js in conn.execute(
                "SELECT step, json FROM row_values WHERE run = ? AND key = ? AND step > ? "
                "ORDER BY step LIMIT ?",
                (rid, kid, after, limit),
            ):
                rows.append((key, step, js))
        return [(k, st, _loads(js)) for k, st, js in values_page(rows, limit)]

    def _output(self, project: str, run_id: str, after_line: int, limit: int) -> list[OutputLine]:
        rows = self._db().execute(
            "SELECT o.line_no, o.ts, o.stream, o.text FROM output o JOIN runs r ON r.id = o.run "
            "WHERE r.project = ? AND r.run_id = ? AND o.line_no > ? ORDER BY o.line_no LIMIT ?",
            (project, run_id, after_line, limit),
        )
        return [OutputLine(*r) for r in rows]

    def _files(self, project: str, run_id: str) -> list[FileRecord]:
        rows = self._db().execute(
            "SELECT f.path, f.sha256, f.size, f.ts FROM files f JOIN runs r ON r.id = f.run "
            "WHERE r.project = ? AND r.run_id = ? ORDER BY f.path",
            (project, run_id),
        )
        return [FileRecord(*r) for r in rows]

    # ------------------------------------------------------------ async API

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
        """Create a run or resume it (see :class:`~server.store.base.Store`)."""
        check_run_fields(state, tags)
        return await self._call(
            self._upsert_run, project, run_id, name, config, tags, group, notes, metadata, state
        )

    async def append_events(self, project: str, run_id: str, events: Sequence[EventTuple]) -> int:
        """Store a batch in one transaction (see :class:`~server.store.base.Store`)."""
        return await self._call(self._append, project, run_id, events)

    async def last_seq(self, project: str, run_id: str) -> int:
        """The run's highest stored seq, 0 when unknown."""
        return await self._call(self._last_seq, project, run_id)

    async def list_projects(self) -> list[ProjectRecord]:
        """Every project with its run count and last activity."""
        return await self._call(self._list_projects)

    async def list_runs(
        self,
        project: str,
        *,
        filters: Sequence[Filter] = (),
        sort: str = "-created",
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[RunRecord], int]:
        """A filtered, sorted page of runs and the total (raises ValueError on a bad filter)."""
        return await self._call(self._list_runs, project, filters, sort, limit, offset)

    async def get_run(self, project: str, run_id: str) -> RunRecord | None:
        """One run, or None."""
        return await self._call(self._get_run, project, run_id)

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
        """Series per (run, key), downsampled past ``buckets`` points."""
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets}")
        return await self._call(
            self._history, project, run_ids, keys, x, buckets, x_min, x_max, after, source
        )

    async def run_keys(self, project: str, run_id: str) -> dict[str, list[str]]:
        """The run's history, value and system keys, each sorted."""
        return await self._call(self._run_keys, project, run_id)

    async def values(
        self,
        project: str,
        run_id: str,
        keys: Sequence[str],
        *,
        after_step: int | None = None,
        limit: int = 1000,
    ) -> list[tuple[str, int, Any]]:
        """Non-numeric row values after ``after_step`` (see :class:`~server.store.base.Store`)."""
        check_values_limit(limit)
        return await self._call(self._values, project, run_id, keys, after_step, limit)

    async def output(
        self, project: str, run_id: str, *, after_line: int = 0, limit: int = 1000
    ) -> list[OutputLine]:
        """Console lines after ``after_line``."""
        return await self._call(self._output, project, run_id, after_line, limit)

    async def files(self, project: str, run_id: str) -> list[FileRecord]:
        """Files the run reported."""
        return await self._call(self._files, project, run_id)

    async def schema_versions(self) -> list[int]:
        """The migration versions recorded in the database."""
        return await self._call(self._schema_versions)

    async def migrate(self) -> None:
        """Apply pending migrations (open does this; calling again is harmless)."""
        await self._call(self._migrate)
