"""Store benchmark: ingest rate and history query latency, per backend.

    PYTHONPATH=src .venv/bin/python bench/store_ingest.py [--backends sqlite,postgres]
        [--batches 50] [--points 1000000] [--repeat 20]

Ingest: ``--batches`` batches of 1,000 steps x 10 metrics through
``append_events`` (the store alone, no HTTP), reported as metric values per
second (issue goal: >= 250,000/s per server process) three ways: over the
whole ingest (wall clock), at the median batch (less hurt by other jobs'
bursts), and per CPU second spent (this process, plus the PostgreSQL backends
serving it when the server runs on this machine and their CPU times can be
read): on a shared, loaded machine the last is the closest to what an idle
one gives, since the work is sequential. Then one run gets a
single series of ``--points`` points (``--points 1000000`` is the issue's
case; a smaller number gives a quick run) in batches of 20,000 steps, and is
queried ``--repeat`` times each way, p50 reported:

- history: the whole series into 1,000 buckets (goal <= 50 ms);
- zoom: the middle tenth of it (``x_min``/``x_max``) into 1,000 buckets;
- runtime: the whole series on the ``_runtime`` x axis;
- live: a cursor fetch of the last 10 points (goal <= 5 ms);
- keys: ``run_keys`` of that run (skipped by a store without it).

PostgreSQL runs in a throwaway schema of ``--pg`` (default
postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from server.store import Store, open_store

KEYS = [f"train/m{i}" for i in range(10)]


def batch(seq0: int, step0: int, steps: int, keys: list[str], rnd: random.Random) -> list[Any]:
    return [
        (
            "row",
            seq0 + i,
            1000.0 + step0 + i,
            {
                "step": step0 + i,
                "runtime": float(step0 + i),
                "data": {k: rnd.random() for k in keys},
            },
        )
        for i in range(steps)
    ]


async def p50_ms(repeat: int, fn: Callable[[], Awaitable[Any]]) -> float:
    lat = []
    for _ in range(repeat):
        q0 = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - q0)
    return statistics.median(lat) * 1000


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of this process and of ``pids`` (PostgreSQL backends) so far."""
    total = time.process_time()
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


async def backend_pids(admin: Any) -> list[int]:
    """PostgreSQL backends connected from this process's sockets (none if unreadable)."""
    ports = {c.laddr.port for c in psutil.Process().net_connections("tcp") if c.raddr}
    rows = await admin.fetch(
        "SELECT pid, client_port FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
    )
    pids = [r["pid"] for r in rows if r["client_port"] in ports]
    try:
        cpu_seconds(pids)
    except psutil.Error:
        return []
    return pids


async def bench(
    store: Store, name: str, args: argparse.Namespace, admin: Any = None
) -> dict[str, float]:
    rnd = random.Random(0)
    await store.upsert_run("bench", "ingest")
    batches = [batch(1 + b * 1000, b * 1000, 1000, KEYS, rnd) for b in range(args.batches)]
    pids = [] if admin is None else await backend_pids(admin)
    per_batch = []
    c0 = cpu_seconds(pids)
    t0 = time.perf_counter()
    for b in batches:
        b0 = time.perf_counter()
        await store.append_events("bench", "ingest", b)
        per_batch.append(time.perf_counter() - b0)
    dt = time.perf_counter() - t0
    cpu = cpu_seconds(pids) - c0
    values = args.batches * 1000 * len(KEYS)
    rate = values / dt
    median_rate = 1000 * len(KEYS) / statistics.median(per_batch)
    cpu_rate = values / cpu

    await store.upsert_run("bench", "big")
    t1 = time.perf_counter()
    chunk = 20_000
    for s0 in range(0, args.points, chunk):
        n = min(chunk, args.points - s0)
        await store.append_events("bench", "big", batch(1 + s0, s0, n, ["loss"], rnd))
    load_s = time.perf_counter() - t1

    def history(**kw: Any) -> Callable[[], Awaitable[Any]]:
        return lambda: store.history("bench", ["big"], ["loss"], buckets=1000, **kw)

    series = (await history()())[("big", "loss")]
    if not series.downsampled or not 0 < len(series.x) <= 1000:
        raise SystemExit(f"{name}: expected up to 1000 buckets, got {len(series.x)}")
    tenth = args.points // 10
    out = {
        "ingest_values_per_s": rate,
        "ingest_median_batch_values_per_s": median_rate,
        "ingest_values_per_cpu_s": cpu_rate,
        "load_s": load_s,
        "history_ms": await p50_ms(args.repeat, history()),
        "zoom_ms": await p50_ms(args.repeat, history(x_min=4.5 * tenth, x_max=5.5 * tenth)),
        "runtime_ms": await p50_ms(args.repeat, history(x="_runtime")),
        "live_ms": await p50_ms(args.repeat, history(after=args.points - 11)),
    }
    run_keys = getattr(store, "run_keys", None)
    if run_keys is not None:
        out["keys_ms"] = await p50_ms(args.repeat, lambda: run_keys("bench", "big"))
    keys = f"{out['keys_ms']:.2f} ms" if "keys_ms" in out else "n/a"
    cpu_of = "process" if admin is None else f"process + {len(pids)} PostgreSQL backend(s)"
    print(
        f"{name:9s} ingest {rate:>9,.0f} values/s (median batch {median_rate:,.0f}/s, "
        f"{cpu_rate:,.0f} per CPU second of {cpu_of}) | {args.points:,} points loaded in "
        f"{load_s:.1f} s | p50: history {out['history_ms']:.1f} ms, zoom "
        f"{out['zoom_ms']:.1f} ms, runtime {out['runtime_ms']:.1f} ms, live "
        f"{out['live_ms']:.2f} ms, run_keys {keys}",
        flush=True,
    )
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    for name in args.backends.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                store = await open_store(Path(tmp) / "bench.db")
                try:
                    await bench(store, name, args)
                finally:
                    await store.aclose()
        elif name == "postgres":
            import asyncpg

            schema = f"runbus_bench_{uuid.uuid4().hex[:8]}"
            conn = await asyncpg.connect(args.pg)
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            try:
                # A fixed pool, open before the ingest, so every backend that
                # serves it is found and measured.
                store = await open_store(args.pg, schema=schema, min_size=2, max_size=2)
                try:
                    await bench(store, name, args, admin=conn)
                finally:
                    await store.aclose()
            finally:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
                await conn.close()
        else:
            raise SystemExit(f"unknown backend {name!r}: use sqlite and/or postgres")


if __name__ == "__main__":
    asyncio.run(main())
