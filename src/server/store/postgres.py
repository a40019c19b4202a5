"""The PostgreSQL store, through an asyncpg connection pool.

Several server processes may share one database: a batch locks its run's row
(``SELECT ... FOR UPDATE``) before it reads ``last_seq``, so two processes
given overlapping batches of one run store each event once; migrations take an
advisory lock; key ids are created in their own committed statement, so the
per-process key cache never holds an id another process cannot see.

Points go in by binary COPY when the batch cannot conflict with stored ones
(a run logging forward), else, like the other tables, through ``INSERT ...
SELECT FROM unnest($1::type[], ...)``: one statement and one round trip per
table per batch, whatever its size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

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
    ROLLUP_COLUMNS,
    ROLLUP_SHIFTS,
    Upkeep,
    batch_blocks,
    history_plan,
    merge_upsert_sql,
    refresh_ranges,
    refresh_unnest_sql,
    rollup_table,
    upkeep,
)


def _dumps_str(v: Any) -> str:
    return _dumps(v).decode()


class PostgresDialect:
    """PostgreSQL spellings for the shared query builders (``$N`` params)."""

    def param(self, params: list[Any], value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    def json_path(self, params: list[Any], column: str, path: list[str]) -> tuple[str, str, str]:
        p = self.param(params, list(path))
        node = f"({column} #> {p}::text[])"
        text = f"({column} #>> {p}::text[])"
        typ = (
            f"(CASE jsonb_typeof({node}) WHEN 'number' THEN 'num' WHEN 'string' THEN 'str' "
            f"WHEN 'boolean' THEN {text} ELSE jsonb_typeof({node}) END)"
        )
        # CASE, not AND: PostgreSQL may evaluate either side of an AND first,
        # and casting a JSON string to float8 raises.
        num = f"(CASE WHEN jsonb_typeof({node}) = 'number' THEN {text}::float8 END)"
        return typ, num, text

    def tags_contains(self, params: list[Any], value: str) -> str:
        p = self.param(params, value)
        return f"(tags @> jsonb_build_array({p}::text))"

    def substr(self, text_expr: str, needle: str) -> str:
        return f"(strpos({text_expr}, {needle}) > 0)"

    def collate(self, text_expr: str) -> str:
        # "C" compares code points, as SQLite's BINARY does on UTF-8: without
        # it the database locale would order strings differently.
        return text_expr if text_expr == "NULL" else f'(({text_expr}) COLLATE "C")'

    def bucket_float(self, x: str, lo: str, n: str, width: str) -> str:
        return (
            f"LEAST({n}::int - 1, floor((({x} - {lo}::float8) * {n}::int) / {width}::float8)::int)"
        )


_D = PostgresDialect()
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
        config=row[4],
        summary=row[5],
        metadata=row[6],
        metrics=row[7],
        tags=row[8],
        group=row[9],
        notes=row[10],
        created=row[11],
        heartbeat_ts=row[12],
        finished_ts=row[13],
        exit_code=row[14],
        last_seq=int(row[15]),
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSONB in and out through jsoncodec, so NaN/inf in config and summary stay exact.
    await conn.set_type_codec(
        "jsonb", encoder=_dumps_str, decoder=_loads, schema="pg_catalog", format="text"
    )


_POINT_COLUMNS = ("run", "key", "step", "ts", "runtime", "value", "kind")


async def _stage(
    conn: asyncpg.Connection, table: str, columns: Sequence[str], records: list[tuple[Any, ...]]
) -> str:
    """COPY ``records`` into this transaction's staging copy of ``table``; its name.

    Binary COPY, because passing rows as array parameters makes asyncpg check
    every element for nesting (about 0.3 µs each); the staging table is a
    temporary one, emptied at commit, so other sessions never see it.
    """
    stage = f"runbus_stage_{table}"
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(stage, records=records, columns=columns)
    return stage


async def _write_points(
    conn: asyncpg.Connection,
    u: Upkeep,
    rid: int,
    ids: dict[str, int],
    rows: list[tuple[Any, ...]],
) -> bool:
    """Write ``(run, key, step, ts, runtime, value, kind)`` rows of one run; True if all were new.

    A batch whose steps all lie above what its keys hold (a run logging
    forward, the usual case) cannot conflict, and goes straight in by binary
    COPY, the fastest way in; the rest is staged and upserted.
    """
    clash = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {u.table} WHERE run = $1 AND key = ANY($2::int[]) "
        "AND step >= $3)",
        rid,
        [ids[k] for k in u.keys],
        u.lowest,
    )
    if not rows:
        return not clash
    if not clash:
        await conn.copy_records_to_table(u.table, records=rows, columns=_POINT_COLUMNS)
        return True
    stage = await _stage(conn, u.table, _POINT_COLUMNS, rows)
    await conn.execute(
        f"INSERT INTO {u.table} SELECT * FROM {stage} WHERE true "
        "ON CONFLICT (run, key, step) DO UPDATE SET ts = EXCLUDED.ts, "
        "runtime = EXCLUDED.runtime, value = EXCLUDED.value, kind = EXCLUDED.kind"
    )
    return False


async def _update_rollups(
    conn: asyncpg.Connection, u: Upkeep, rid: int, ids: dict[str, int], appends: bool
) -> None:
    """Bring ``u.table``'s rollup blocks up to date with the batch just written."""
    if appends:
        # Merge the batch's own block aggregates, every shift at once (the
        # primary key includes the shift, so no row is hit twice).
        rows = [
            (rid, ids[k], shift, b, *a)
            for shift, level in zip(ROLLUP_SHIFTS, batch_blocks(u.points), strict=True)
            for (k, b), a in level.items()
        ]
        roll = rollup_table(u.table)
        stage = await _stage(conn, roll, ROLLUP_COLUMNS.split(", "), rows)
        await conn.execute(merge_upsert_sql(u.table, f"SELECT * FROM {stage} WHERE true"))
        return
    kids = [ids[k] for k in u.keys]
    for i, ranges in enumerate(refresh_ranges(u.steps)):
        delete, refresh = refresh_unnest_sql(u.table, i)
        args = [
            [kid for kid in kids for _ in ranges],
            [b0 for _ in kids for b0, _ in ranges],
            [b1 for _ in kids for _, b1 in ranges],
        ]
        if u.deleted:
            # A deletion may have emptied a block, which no upsert removes.
            await conn.execute(delete, rid, *args)
        await conn.execute(refresh, rid, *args)


class PostgresStore:
    """A :class:`~server.store.base.Store` in PostgreSQL. Open with :meth:`open`.

    ``schema``: the search_path to use (tests give each test its own).
    ``stale_after``, ``clock`` and ``exact_points`` as for
    :class:`~server.store.sqlite.SqliteStore`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        stale_after: float = 120.0,
        clock: Callable[[], float] = time.time,
        exact_points: int = EXACT_POINTS,
    ) -> None:
        self._pool: asyncpg.Pool | None = pool
        self.stale_after = stale_after
        self.clock = clock
        self.exact_points = exact_points
        self._keys: dict[str, int] = {}

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        **kwargs: Any,
    ) -> PostgresStore:
        """Connect a pool to ``dsn`` and migrate the database."""
        settings = {"search_path": schema} if schema else None
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            server_settings=settings,
        )
        store = cls(pool, **kwargs)
        try:
            await store.migrate()
        except BaseException:
            await store.aclose()
            raise
        return store

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreClosedError("the store is closed")
        return self._pool

    async def aclose(self) -> None:
        """Close the pool; idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def migrate(self) -> None:
        """Apply pending migrations (open does this; calling again is harmless)."""
        async with self._p().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", migrations.PG_LOCK_KEY)
            await conn.execute(migrations.SCHEMA_VERSION_POSTGRES)
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_version")}
            for m in migrations.MIGRATIONS:
                if m.version in done:
                    continue
                async with conn.transaction():  # a savepoint per migration
                    for stmt in migrations.statements(m.postgres):
                        await conn.execute(stmt)
                    await conn.execute(
                        "INSERT INTO schema_version VALUES ($1, $2, $3)",
                        m.version,
                        m.description,
                        time.time(),
                    )

    async def schema_versions(self) -> list[int]:
        """The migration versions recorded in the database."""
        rows = await self._p().fetch("SELECT version FROM schema_version ORDER BY version")
        return [r[0] for r in rows]

    async def _key_ids(self, names: set[str]) -> dict[str, int]:
        missing = [n for n in names if n not in self._keys]
        if missing:
            # Committed on its own (autocommit), before the batch transaction.
            rows = await self._p().fetch(
                "WITH ins AS (INSERT INTO keys (name) SELECT unnest($1::text[]) "
                "ON CONFLICT (name) DO NOTHING RETURNING id, name) "
                "SELECT id, name FROM ins UNION ALL "
                "SELECT id, name FROM keys WHERE name = ANY($1::text[])",
                missing,
            )
            for kid, name in rows:
                self._keys[name] = kid
            late = [n for n in missing if n not in self._keys]
            if late:
                # Another process committed these after this statement's
                # snapshot began: DO NOTHING skipped them and the SELECT could
                # not see them yet; a new statement can.
                rows = await self._p().fetch(
                    "SELECT id, name FROM keys WHERE name = ANY($1::text[])", late
                )
                for kid, name in rows:
                    self._keys[name] = kid
        return {n: self._keys[n] for n in names}

    async def _lookup_keys(
        self, names: Sequence[str], conn: asyncpg.Connection | None = None
    ) -> dict[str, int]:
        missing = [n for n in names if n not in self._keys]
        if missing:
            rows = await (conn or self._p()).fetch(
                "SELECT id, name FROM keys WHERE name = ANY($1::text[])", missing
            )
            for kid, name in rows:
                self._keys[name] = kid
        return {n: self._keys[n] for n in names if n in self._keys}

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
        now = self.clock()
        async with self._p().acquire() as conn, conn.transaction():
            # Resume keeps what is not given; config and metadata merge
            # top-level (jsonb ||), as their events do.
            await conn.execute(
                "INSERT INTO runs (project, run_id, name, group_name, notes, tags, config, "
                "metadata, state, created, heartbeat_ts) "
                "VALUES ($1, $2, $3, $4, $5, coalesce($6::jsonb, '[]'), $7::jsonb, $8::jsonb, "
                "$9, $10, $10) "
                "ON CONFLICT (project, run_id) DO UPDATE SET "
                "name = coalesce($3, runs.name), group_name = coalesce($4, runs.group_name), "
                "notes = coalesce($5, runs.notes), tags = coalesce($6::jsonb, runs.tags), "
                "config = runs.config || $7::jsonb, metadata = runs.metadata || $8::jsonb, "
                "state = $9, heartbeat_ts = $10, "
                "exit_code = CASE WHEN $9 = 'running' THEN NULL ELSE runs.exit_code END, "
                "finished_ts = CASE WHEN $9 = 'running' THEN NULL ELSE runs.finished_ts END",
                project,
                run_id,
                name,
                group,
                notes,
                None if tags is None else list(tags),
                config or {},
                metadata or {},
                state,
                now,
            )
        rec = await self.get_run(project, run_id)
        assert rec is not None
        return rec

    async def append_events(self, project: str, run_id: str, events: Sequence[EventTuple]) -> int:
        """Store a batch in one transaction (see :class:`~server.store.base.Store`)."""
        want_json = needs_json(events)
        cols = "id, last_seq, state, partial_step, partial_keys, stats_count, output_lines"
        if want_json:
            cols += ", config, summary, metadata, metrics"
        # Key ids first, outside the transaction (see the module docstring).
        names: set[str] = set()
        for kind, _, _, body in events:
            if kind == "row" or kind == "partial":
                names.update(body["data"])
            elif kind == "stats":
                names.update(body["values"])
        # Before taking a connection for the batch: creating ids needs one of
        # its own, and a pool of one would otherwise wait on itself.
        ids = await self._key_ids(names)
        async with self._p().acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {cols} FROM runs WHERE project = $1 AND run_id = $2 FOR UPDATE",
                project,
                run_id,
            )
            if row is None:
                raise RunNotFoundError(project, run_id)
            fresh = new_events(project, run_id, int(row[1]), events)
            if not fresh:
                return int(row[1])
            rid = row[0]
            state = RunState(
                rid=rid,
                last_seq=int(row[1]),
                state=row[2],
                partial_step=row[3],
                partial_keys=row[4],
                stats_count=int(row[5]),
                output_lines=int(row[6]),
                config=row[7] if want_json else None,
                summary=row[8] if want_json else None,
                metadata=row[9] if want_json else None,
                metrics=row[10] if want_json else None,
            )
            plan = plan_batch(state, fresh, _dumps_str)
            gone = [k for k, _ in plan.deletes if k not in ids]
            if gone:
                # Keys of a partial stored by an earlier batch: they exist, so
                # reading them on the batch's own connection is enough.
                ids.update(await self._lookup_keys(gone, conn))
            if plan.deletes:
                dk = [ids[k] for k, _ in plan.deletes]
                ds = [s for _, s in plan.deletes]
                for table in ("series", "row_values"):
                    await conn.execute(
                        f"DELETE FROM {table} WHERE run = $1 AND (key, step) IN "
                        "(SELECT * FROM unnest($2::int[], $3::bigint[]))",
                        rid,
                        dk,
                        ds,
                    )
            for u in upkeep(plan):
                rows = (
                    [(rid, ids[k], *v) for (k, _), v in plan.series.items()]
                    if u.table == "series"
                    else [(rid, ids[s[0]], *s[1:]) for s in plan.system]
                )
                appends = await _write_points(conn, u, rid, ids, rows)
                await _update_rollups(conn, u, rid, ids, appends and not u.deleted)
            if plan.values:
                vk = [ids[k] for k, _ in plan.values]
                vs = [v[0] for v in plan.values.values()]
                vj = [v[1] for v in plan.values.values()]
                await conn.execute(
                    "INSERT INTO row_values (run, key, step, json) "
                    "SELECT $1, * FROM unnest($2::int[], $3::bigint[], $4::text[]) "
                    "ON CONFLICT (run, key, step) DO UPDATE SET json = EXCLUDED.json",
                    rid,
                    vk,
                    vs,
                    vj,
                )
            if plan.output:
                oc = list(zip(*plan.output, strict=True))
                await conn.execute(
                    "INSERT INTO output (run, line_no, ts, stream, text) "
                    "SELECT $1, * FROM unnest($2::bigint[], $3::float8[], $4::text[], $5::text[]) "
                    "ON CONFLICT (run, line_no) DO NOTHING",
                    rid,
                    *oc,
                )
            if plan.files:
                # One row per path: a file saved twice in a batch keeps its last record.
                last = {f[0]: f for f in plan.files}
                fc = list(zip(*last.values(), strict=True))
                await conn.execute(
                    "INSERT INTO files (run, path, sha256, size, ts) "
                    "SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], "
                    "$5::float8[]) ON CONFLICT (run, path) DO UPDATE SET "
                    "sha256 = EXCLUDED.sha256, size = EXCLUDED.size, ts = EXCLUDED.ts",
                    rid,
                    *fc,
                )
            args: list[Any] = [
                rid,
                plan.last_seq,
                self.clock(),
                plan.partial_step,
                plan.partial_keys,
                plan.stats_count,
                plan.output_lines,
            ]
            sets = [
                "last_seq = $2",
                "heartbeat_ts = $3",
                "partial_step = $4",
                "partial_keys = $5::jsonb",
                "stats_count = $6",
                "output_lines = $7",
            ]
            for col in ("config", "summary", "metadata", "metrics"):
                val = getattr(plan, col)
                if val is not None:
                    args.append(val)
                    sets.append(f"{col} = ${len(args)}::jsonb")
            if plan.state is not None:
                args += [plan.state, plan.exit_code, plan.finished_ts]
                n = len(args)
                sets += [f"state = ${n - 2}", f"exit_code = ${n - 1}", f"finished_ts = ${n}"]
            await conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = $1", *args)
        return plan.last_seq

    async def last_seq(self, project: str, run_id: str) -> int:
        """The run's highest stored seq, 0 when unknown."""
        v = await self._p().fetchval(
            "SELECT last_seq FROM runs WHERE project = $1 AND run_id = $2", project, run_id
        )
        return 0 if v is None else int(v)

    async def list_projects(self) -> list[ProjectRecord]:
        """Every project with its run count and last activity."""
        rows = await self._p().fetch(
            "SELECT project, COUNT(*), MAX(heartbeat_ts) FROM runs "
            'GROUP BY project ORDER BY project COLLATE "C"'
        )
        return [ProjectRecord(r[0], int(r[1]), r[2]) for r in rows]

    async def get_run(self, project: str, run_id: str) -> RunRecord | None:
        """One run, or None."""
        params: list[Any] = []
        st = state_expr(self.clock() - self.stale_after)
        p1 = _D.param(params, project)
        p2 = _D.param(params, run_id)
        row = await self._p().fetchrow(
            f"SELECT {_RUN_COLS.format(state=st)} FROM runs WHERE project = {p1} AND run_id = {p2}",
            *params,
        )
        return None if row is None else _record(row)

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
        params: list[Any] = []
        st = state_expr(self.clock() - self.stale_after)
        conds = [f"project = {_D.param(params, project)}"]
        conds += [filter_sql(_D, params, f, st) for f in filters]
        where = " AND ".join(conds)
        async with self._p().acquire() as conn:
            # Count before ORDER BY adds its params: a statement must get exactly its own.
            total = await conn.fetchval(f"SELECT COUNT(*) FROM runs WHERE {where}", *params)
            order = order_sql(_D, params, sort, st)
            lim = _D.param(params, int(limit))
            off = _D.param(params, int(offset))
            rows = await conn.fetch(
                f"SELECT {_RUN_COLS.format(state=st)} FROM runs WHERE {where} "
                f"ORDER BY {order} LIMIT {lim} OFFSET {off}",
                *params,
            )
        return [_record(r) for r in rows], int(total)

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
        table = "series" if source == "history" else "system"
        x_kind, x_name = x_axis(x)
        out: dict[tuple[str, str], Series] = {}
        if not run_ids or not keys:
            return out
        pool = self._p()
        runs = await pool.fetch(
            "SELECT id, run_id FROM runs WHERE project = $1 AND run_id = ANY($2::text[])",
            project,
            list(run_ids),
        )
        kids = await self._lookup_keys([*keys, x_name] if x_kind == "metric" else keys)
        xkid = kids.get(x_name) if x_kind == "metric" else None
        if x_kind == "metric" and xkid is None:
            return out
        async with pool.acquire() as conn:
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
                            sql, params = plan.send(await conn.fetch(sql, *params))
                    except StopIteration as done:
                        if done.value is not None:
                            out[(run_id, key)] = done.value
        return out

    async def run_keys(self, project: str, run_id: str) -> dict[str, list[str]]:
        """The run's history, value and system keys, each sorted."""
        out: dict[str, list[str]] = {"history": [], "values": [], "system": []}
        async with self._p().acquire() as conn:
            rid = await conn.fetchval(
                "SELECT id FROM runs WHERE project = $1 AND run_id = $2", project, run_id
            )
            if rid is None:
                return out
            for name, table in (
                ("history", "series"),
                ("values", "row_values"),
                ("system", "system"),
            ):
                sql, params = run_keys_sql(_D, table, rid)
                out[name] = sorted(r[0] for r in await conn.fetch(sql, *params))
        return out

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
        kids = await self._lookup_keys(list(dict.fromkeys(keys)))
        if not kids:
            return []
        # One index range per key (LATERAL), rather than sorting every value
        # of the run by step.
        rows = await self._p().fetch(
            "SELECT q.name, v.step, v.json FROM runs r "
            "CROSS JOIN unnest($3::text[], $4::int[]) AS q(name, kid) "
            "CROSS JOIN LATERAL (SELECT step, json FROM row_values "
            "WHERE run = r.id AND key = q.kid AND step > $5 ORDER BY step LIMIT $6) v "
            "WHERE r.project = $1 AND r.run_id = $2",
            project,
            run_id,
            list(kids),
            list(kids.values()),
            -(2**63) if after_step is None else int(after_step),
            limit,
        )
        page = values_page([(r[0], int(r[1]), r[2]) for r in rows], limit)
        return [(k, st, _loads(js)) for k, st, js in page]

    async def output(
        self, project: str, run_id: str, *, after_line: int = 0, limit: int = 1000
    ) -> list[OutputLine]:
        """Console lines after ``after_line``."""
        rows = await self._p().fetch(
            "SELECT o.line_no, o.ts, o.stream, o.text FROM output o JOIN runs r ON r.id = o.run "
            "WHERE r.project = $1 AND r.run_id = $2 AND o.line_no > $3 "
            "ORDER BY o.line_no LIMIT $4",
            project,
            run_id,
            after_line,
            limit,
        )
        return [OutputLine(int(r[0]), r[1], r[2], r[3]) for r in rows]

    async def files(self, project: str, run_id: str) -> list[FileRecord]:
        """Files the run reported."""
        rows = await self._p().fetch(
            "SELECT f.path, f.sha256, f.size, f.ts FROM files f JOIN runs r ON r.id = f.run "
            'WHERE r.project = $1 AND r.run_id = $2 ORDER BY f.path COLLATE "C"',
            project,
            run_id,
        )
        return [FileRecord(r[0], r[1], int(r[2]), r[3]) for r in rows]
