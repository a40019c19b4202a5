"""Server memory benchmark: RSS of ``runbus server`` over a big store, under a query mix.

    PYTHONPATH=src .venv/bin/python bench/server_memory.py [--backends sqlite,postgres]
        [--runs 100] [--steps 1000000] [--passes 3] [--data DIR] [--schema NAME] [--json]

1. Fills a store through the store API (in this process, no HTTP; the
   fastest way in) with ``--runs`` runs of ``--steps`` steps. Each step logs
   one metric, ``train/loss`` (so 100 x 1,000,000 = 100 million stored points);
   each run also has a config (lr, batch_size, optimizer, layers, seed), tags,
   a group, a summary, 2,000 console lines and a finish event (every tenth run
   failed). ``--concurrency`` runs are filled at once.
2. Starts ``runbus server`` on that store (a child process) and records its RSS
   once it is up.
3. Runs a query mix over HTTP ``--passes`` times, as a user browsing the runs
   would: the runs table sorted, filtered and paged; run records; every point
   of ``--history-runs`` runs' history into 1,000 buckets, one run at a time
   and 5 runs in one request; a zoom to 1,000 raw points; a live cursor fetch;
   two pages of console output. Prints each query's median latency, and the
   server's RSS after each pass, its peak (VmHWM) and how it splits into
   anonymous memory (heap, SQLite's page cache) and file pages (SQLite's mmap
   of the database).

Goal (issue): <= 150 MB RSS with 100 runs of 1,000,000 steps stored.

Filling 100 million points takes 10-20 minutes per backend on 2 cores. Keep the
store to measure again without refilling: ``--data DIR`` keeps the SQLite
database there, ``--schema NAME`` keeps a PostgreSQL schema; a later run with
the same option fills only what is missing (each run resumes from its stored
``last_seq``). Without them the store is thrown away at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from _workload import machine_info, md_table, write_json
from server.store import EventTuple, Store, open_store
from server.store.base import RAW_LIMIT
from server_ingest import PG_DEFAULT, PROJECT, Api, RunbusServer, p50, pg_reachable, pg_schema

KEY = "train/loss"
OUTPUT_EVENTS = 10
OUTPUT_LINES = 200  # per output event: 2,000 lines a run
FILL_BATCH = 10_000  # events per append_events call


def run_id(i: int) -> str:
    return f"run-{i:03d}"


def run_fields(i: int) -> dict[str, Any]:
    """The run's name, config, tags and group (a small grid search)."""
    return {
        "name": f"sweep-{i // 10}-{i % 10}",
        "config": {
            "lr": (1e-4, 3e-4, 1e-3, 3e-3)[i % 4],
            "batch_size": (32, 64, 128, 256)[i // 4 % 4],
            "optimizer": "adam" if i % 2 else "sgd",
            "layers": 2 + i % 6,
            "seed": i,
        },
        "tags": ["baseline"] if i % 3 == 0 else ["sweep"],
        "group": f"sweep-{i // 10}",
    }


def loss(i: int, step: int, noise: float) -> float:
    return 2.0 * math.exp(-step / (150_000 + 5_000 * i)) + 0.05 * noise


def row_batch(i: int, step0: int, step1: int) -> list[EventTuple]:
    """Rows ``step0 <= step < step1`` of run ``i`` (seq = step + 1), reproducible from any step."""
    rnd = random.Random(i * 1_000_003 + step0)
    return [
        (
            "row",
            s + 1,
            1.7e9 + s * 0.01,
            {"step": s, "runtime": s * 0.01, "data": {KEY: loss(i, s, rnd.random())}},
        )
        for s in range(step0, step1)
    ]


def tail_events(i: int, steps: int) -> list[EventTuple]:
    """What follows the rows: console output, the summary, finish."""
    seq = steps
    ts = 1.7e9 + steps * 0.01
    out: list[EventTuple] = []
    lr = run_fields(i)["config"]["lr"]
    for chunk in range(OUTPUT_EVENTS):
        lines = "".join(
            f"epoch {chunk} step {n * 500} loss {loss(i, n * 500, 0.5):.5f} lr {lr}\n"
            for n in range(chunk * OUTPUT_LINES, (chunk + 1) * OUTPUT_LINES)
        )
        seq += 1
        out.append(("output", seq, ts, {"stream": "stdout", "text": lines}))
    last = loss(i, steps - 1, 0.5)
    summary = {KEY: last, "best_acc": 0.5 + 0.4 * (i % 17) / 16, "_step": steps - 1}
    out.append(("summary", seq + 1, ts, {"values": summary}))
    out.append(("finish", seq + 2, ts, {"exit_code": 1 if i % 10 == 9 else 0}))
    return out


def total_seq(steps: int) -> int:
    return steps + OUTPUT_EVENTS + 2


async def fill_run(store: Store, i: int, steps: int) -> int:
    """Store what run ``i`` lacks; the number of rows written."""
    rid = run_id(i)
    last = await store.last_seq(PROJECT, rid)
    if last >= total_seq(steps):
        return 0
    await store.upsert_run(PROJECT, rid, **run_fields(i))
    written = 0
    for s0 in range(min(last, steps), steps, FILL_BATCH):
        s1 = min(steps, s0 + FILL_BATCH)
        await store.append_events(PROJECT, rid, row_batch(i, s0, s1))
        written += s1 - s0
    tail = [e for e in tail_events(i, steps) if e[1] > last]
    await store.append_events(PROJECT, rid, tail)
    return written


async def fill(
    store: Store, args: argparse.Namespace, say: Callable[[str], None]
) -> dict[str, float]:
    """Fill ``args.runs`` runs, ``args.concurrency`` at a time; rows written and rows/s."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.runs):
        queue.put_nowait(i)
    done = 0
    rows = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal done, rows
        while not queue.empty():
            i = queue.get_nowait()
            # Awaited first: ``rows += await ...`` would read ``rows`` before the
            # await and lose what the other workers added meanwhile.
            written = await fill_run(store, i, args.steps)
            rows += written
            done += 1
            if rows and (done % 5 == 0 or done == args.runs):
                dt = time.perf_counter() - t0
                left = (args.runs - done) * args.steps / (rows / dt) if rows else 0
                say(
                    f"  filled {done}/{args.runs} runs: {rows / dt:,.0f} rows/s, "
                    f"~{left / 60:.0f} min left"
                )

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    dt = time.perf_counter() - t0
    return {"rows_written": rows, "fill_s": dt, "rows_per_s": rows / dt if rows else 0.0}


# ---------------------------------------------------------------------------
# Queries


def query_mix(
    args: argparse.Namespace,
) -> list[tuple[str, str, dict[str, Any], Callable[[Any], str | None]]]:
    """(label, path, params, check) for each request of one pass; check returns a fault or None."""
    runs = f"/projects/{PROJECT}/runs"
    n = args.runs
    spread = [run_id(i * n // args.history_runs) for i in range(args.history_runs)]
    failed = n // 10
    finished_lr = sum(1 for i in range(n) if i % 10 != 9 and run_fields(i)["config"]["lr"] >= 1e-3)

    def total(want: int) -> Callable[[Any], str | None]:
        return lambda got: (
            None if got["total"] == want else f"total {got['total']}, expected {want}"
        )

    def buckets(want: int, series: int = 1) -> Callable[[Any], str | None]:
        def check(got: Any) -> str | None:
            lens = [len(s["x"]) for s in got["series"]]
            return (
                None
                if lens == [want] * series
                else f"series lengths {lens}, expected {series} x {want}"
            )

        return check

    def lines(got: Any) -> str | None:
        return None if len(got["lines"]) == 1000 else f"{len(got['lines'])} lines, expected 1000"

    mix: list[tuple[str, str, dict[str, Any], Callable[[Any], str | None]]] = [
        ("projects", "/projects", {}, lambda got: None),
        ("runs: newest 50", runs, {"limit": 50}, total(n)),
        (
            "runs: sort by summary.best_acc",
            runs,
            {"sort": "-summary.best_acc", "limit": 50},
            total(n),
        ),
        (
            "runs: filter config.lr, state; sort config.batch_size",
            runs,
            {
                "filter": ["config.lr>=0.001", "state=finished"],
                "sort": "config.batch_size",
                "limit": 50,
            },
            total(finished_lr),
        ),
        ("runs: state=failed", runs, {"filter": "state=failed", "limit": 50}, total(failed)),
        (
            "runs: tags contain sweep, page 2",
            runs,
            {"filter": "tags~sweep", "offset": 50, "limit": 50},
            total(sum(1 for i in range(n) if i % 3)),
        ),
    ]
    for rid in spread:
        mix.append(("run record", f"{runs}/{rid}", {}, lambda got: None))
    whole = min(args.steps, 1000)
    for rid in spread:
        mix.append(
            (
                f"history of one run ({args.steps:,} points) -> 1,000 buckets",
                f"{runs}/{rid}/history",
                {"keys": KEY, "buckets": 1000},
                buckets(whole),
            )
        )
    five = spread[:5]
    mix.append(
        (
            f"history of {len(five)} runs in one request -> 1,000 buckets",
            f"/projects/{PROJECT}/history",
            {"runs": ",".join(five), "keys": KEY, "buckets": 1000},
            buckets(whole, len(five)),
        )
    )
    mid = args.steps // 2
    zoom = min(1000, args.steps - mid)
    for rid in spread[:3]:
        mix.append(
            (
                "zoom: 1,000 raw points mid-run",
                f"{runs}/{rid}/history",
                {"keys": KEY, "x_min": mid, "x_max": mid + zoom - 1},
                buckets(zoom),
            )
        )
        mix.append(
            (
                "live cursor: last 10 points",
                f"{runs}/{rid}/history",
                {"keys": KEY, "after": args.steps - 11},
                buckets(min(10, args.steps)),
            )
        )
        # The biggest answer the API gives: a live chart that follows a run from
        # its start gets up to 100,000 raw points a call.
        mix.append(
            (
                f"live cursor from the start: {min(RAW_LIMIT, args.steps):,} raw points",
                f"{runs}/{rid}/history",
                {"keys": KEY, "after": -1},
                buckets(min(RAW_LIMIT, args.steps)),
            )
        )
    for rid in spread[:3]:
        mix.append(("output page 1 (1,000 lines)", f"{runs}/{rid}/output", {"limit": 1000}, lines))
        mix.append(
            (
                "output page 2 (1,000 lines)",
                f"{runs}/{rid}/output",
                {"after_line": 1000, "limit": 1000},
                lines,
            )
        )
    return mix


def mem_row(label: str, mem: dict[str, int]) -> list[str]:
    def mb(name: str) -> str:
        return f"{mem[name] / 1e6:.1f} MB" if name in mem else "n/a"

    return [label, mb("VmRSS"), mb("RssAnon"), mb("RssFile"), mb("VmHWM")]


async def measure(
    srv: RunbusServer, args: argparse.Namespace, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run the query mix ``args.passes`` times; latencies by label and memory along the way."""
    from pipeline import jsoncodec

    memory: list[tuple[str, dict[str, int]]] = [("after start", srv.memory())]
    latency: dict[str, list[float]] = {}
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        api = Api(s, srv.url, srv.key)
        for n in range(args.passes):
            t_pass = time.perf_counter()
            for label, path, params, check in query_mix(args):
                t = time.perf_counter()
                body = await api.raw("GET", path, **params)
                latency.setdefault(label, []).append(time.perf_counter() - t)
                fault = check(jsoncodec.loads(body))
                if fault is not None:
                    raise RuntimeError(f"{label}: {fault}")
            mem = srv.memory()
            memory.append((f"after pass {n + 1}", mem))
            say(
                f"  pass {n + 1}: {time.perf_counter() - t_pass:.1f} s, "
                f"RSS {mem.get('VmRSS', 0) / 1e6:.1f} MB, "
                f"peak {mem.get('VmHWM', 0) / 1e6:.1f} MB"
            )
    return {"memory": memory, "latency": latency}


# ---------------------------------------------------------------------------
# Backends


@contextlib.asynccontextmanager
async def sqlite_target(args: argparse.Namespace) -> AsyncIterator[tuple[str, Callable[[], str]]]:
    """The SQLite path (kept in ``--data``, else a temporary directory) and a size reporter."""
    with contextlib.ExitStack() as stack:
        if args.data:
            root = Path(args.data)
            root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before any work starts)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="runbus-mem-")))
        db = root / "runbus.db"

        def size() -> str:
            total = sum(p.stat().st_size for p in root.glob("runbus.db*"))
            return f"{total / 1e9:.2f} GB (database, WAL included)"

        yield str(db), size


@contextlib.asynccontextmanager
async def postgres_target(args: argparse.Namespace) -> AsyncIterator[tuple[str, Callable[[], str]]]:
    """A ``postgresql://`` URL in ``--schema`` (kept) or a throwaway schema, and a size reporter."""
    import asyncpg

    sizes: dict[str, str] = {}

    async def measure_size(url: str, schema: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            total = await conn.fetchval(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
                schema,
            )
        finally:
            await conn.close()
        sizes["size"] = f"{float(total or 0) / 1e9:.2f} GB (tables with their indexes and TOAST)"

    if args.schema:
        conn = await asyncpg.connect(args.pg)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{args.schema}"')
        finally:
            await conn.close()
        sep = "&" if "?" in args.pg else "?"
        yield f"{args.pg}{sep}search_path={args.schema}", lambda: sizes.get("size", "?")
        await measure_size(args.pg, args.schema)
    else:
        async with pg_schema(args.pg) as url:
            yield url, lambda: sizes.get("size", "?")
            # Measured before the schema is dropped.
            await measure_size(args.pg, url.rsplit("search_path=", 1)[1])


async def bench_backend(
    name: str,
    target: str,
    size: Callable[[], str],
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> dict[str, Any]:
    say(
        f"{name}: filling {args.runs} runs x {args.steps:,} steps ({KEY} only) "
        "through the store API"
    )
    store = await open_store(target)
    try:
        filled = await fill(store, args, say)
    finally:
        await store.aclose()
    say(
        f"  filled in {filled['fill_s']:.0f} s ({filled['rows_written']:,} rows written"
        + (
            f", {filled['rows_per_s']:,.0f} rows/s)"
            if filled["rows_written"]
            else ", all already there)"
        )
    )
    with (
        tempfile.TemporaryDirectory(prefix="runbus-mem-keys-") as keys_dir,
        RunbusServer(Path(keys_dir), target) as srv,
    ):
        say(f"  server up: RSS {srv.memory().get('VmRSS', 0) / 1e6:.1f} MB")
        result = await measure(srv, args, say)
    result["fill"] = filled
    result["backend"] = name
    return result


def report(result: dict[str, Any], size: str) -> str:
    mem = [mem_row(label, m) for label, m in result["memory"]]
    lat = [
        [label, f"{p50(v) * 1e3:.1f} ms", f"{max(v) * 1e3:.1f} ms", str(len(v))]
        for label, v in result["latency"].items()
    ]
    return "\n".join(
        [
            f"### {result['backend']}: store {size}",
            "",
            md_table(["when", "RSS", "anon", "file", "peak RSS (VmHWM)"], mem),
            "",
            md_table(["query", "p50", "max", "requests"], lat),
        ]
    )


async def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1_000_000, help="steps (points) per run")
    ap.add_argument("--concurrency", type=int, default=2, help="runs filled at once")
    ap.add_argument("--passes", type=int, default=3, help="times the query mix runs")
    ap.add_argument("--history-runs", type=int, default=10, help="runs whose history is read")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one request may take")
    ap.add_argument(
        "--data", default=None, help="keep (and reuse) the SQLite store in this directory"
    )
    ap.add_argument(
        "--schema", default=None, help="keep (and reuse) the PostgreSQL store in this schema"
    )
    ap.add_argument("--pg", default=PG_DEFAULT)
    ap.add_argument("--json", action="store_true", help="also write bench/out/server_memory-*.json")
    args = ap.parse_args()
    if args.history_runs > args.runs or args.history_runs < 1:
        ap.error(f"--history-runs must be 1..--runs ({args.runs})")

    def say(line: str) -> None:
        print(line, flush=True)

    info = machine_info()
    say(f"machine: {info['nproc']} CPUs ({info['cpu']}), load {info['loadavg']}")
    say(f"runbus: {info['runbus']}")
    results = []
    reports = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            async with sqlite_target(args) as (target, size):
                res = await bench_backend("SQLite", target, size, args, say)
                res["store_size"] = size()
        elif backend == "postgres":
            why = await pg_reachable(args.pg)
            if why is not None:
                say(f"skipped: PostgreSQL: {why}")
                continue
            async with postgres_target(args) as (target, size):
                res = await bench_backend("PostgreSQL", target, size, args, say)
            res["store_size"] = size()
        else:
            ap.error(f"unknown backend {backend!r}: use sqlite and/or postgres")
        results.append(res)
        reports.append(report(res, res["store_size"]))
    say("")
    say(
        f"{args.runs} runs x {args.steps:,} steps of one metric "
        f"({args.runs * args.steps:,} points)\n"
    )
    say("\n\n".join(reports))
    info["loadavg_end"] = os.getloadavg()
    say(f"load at the end: {info['loadavg_end']}")
    if args.json:
        path = write_json(
            "server_memory", {"machine": info, "args": vars(args), "results": results}
        )
        say(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
