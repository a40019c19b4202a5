"""Store benchmark: ingest rate and history query latency, per backend.

    PYTHONPATH=src .venv/bin/python bench/store_ingest.py [--backends sqlite,postgres]
        [--batches 50] [--points 1000000] [--repeat 20]

Ingest: batches of 1,000 steps x 10 metrics through ``append_events`` (the
store alone, no HTTP), reported as metric values per second (issue goal:
>= 250,000/s per server process). History: one series of ``--points`` points
into 1,000 buckets, p50 over ``--repeat`` queries (goal <= 50 ms), and a live
cursor fetch of the last 10 points (goal <= 5 ms). PostgreSQL runs in a
throwaway schema of ``--pg`` (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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


async def bench(store: Store, name: str, args: argparse.Namespace) -> dict[str, float]:
    rnd = random.Random(0)
    await store.upsert_run("bench", "ingest")
    batches = [batch(1 + b * 1000, b * 1000, 1000, KEYS, rnd) for b in range(args.batches)]
    t0 = time.perf_counter()
    for b in batches:
        await store.append_events("bench", "ingest", b)
    dt = time.perf_counter() - t0
    rate = args.batches * 1000 * len(KEYS) / dt

    await store.upsert_run("bench", "big")
    t1 = time.perf_counter()
    chunk = 20_000
    for s0 in range(0, args.points, chunk):
        n = min(chunk, args.points - s0)
        await store.append_events("bench", "big", batch(1 + s0, s0, n, ["loss"], rnd))
    load_s = time.perf_counter() - t1

    lat = []
    for _ in range(args.repeat):
        q0 = time.perf_counter()
        h = await store.history("bench", ["big"], ["loss"], buckets=1000)
        lat.append(time.perf_counter() - q0)
    series = h[("big", "loss")]
    if not series.downsampled or len(series.x) != 1000:
        raise SystemExit(f"{name}: expected 1000 buckets, got {len(series.x)}")
    live = []
    for _ in range(args.repeat):
        q0 = time.perf_counter()
        await store.history("bench", ["big"], ["loss"], after=args.points - 11)
        live.append(time.perf_counter() - q0)
    out = {
        "ingest_values_per_s": rate,
        "load_1M_s": load_s,
        "history_p50_ms": statistics.median(lat) * 1000,
        "history_min_ms": min(lat) * 1000,
        "live_p50_ms": statistics.median(live) * 1000,
    }
    print(
        f"{name:9s} ingest {rate:>11,.0f} values/s | {args.points:,}-point series loaded in "
        f"{load_s:.1f} s | history 1000 buckets p50 {out['history_p50_ms']:.1f} ms "
        f"(min {out['history_min_ms']:.1f}) | live cursor p50 {out['live_p50_ms']:.2f} ms",
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
                store = await open_store(args.pg, schema=schema)
                try:
                    await bench(store, name, args)
                finally:
                    await store.aclose()
            finally:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
                await conn.close()
        else:
            raise SystemExit(f"unknown backend {name!r}: use sqlite and/or postgres")


if __name__ == "__main__":
    asyncio.run(main())
