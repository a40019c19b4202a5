"""One suite for every store backend: each test runs on SQLite and on PostgreSQL.

PostgreSQL tests use 127.0.0.1:5432, database ``test`` (override with
``RUNBUS_TEST_POSTGRES_DSN``), each in a fresh schema dropped afterwards. When
the server is unreachable they skip, unless ``RUNBUS_TEST_POSTGRES=1`` (CI),
where they fail instead. Expected results come from Python references, so two
backends that pass agree with each other.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from server.store import RunNotFoundError, SeqGapError, Store
from server.store.migrations import MIGRATIONS

pytestmark = pytest.mark.anyio
# The store_factory fixture (tests/server/conftest.py) opens stores on the test's database.
StoreFactory = Callable[..., Awaitable[Store]]

P = "proj"


class Clock:
    """A settable clock for heartbeats and staleness."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_store(store_factory: StoreFactory, clock: Clock) -> StoreFactory:
    """Opens stores on the test's database, on the test's settable clock."""

    async def make(**kw: Any) -> Store:
        kw.setdefault("clock", clock)
        return await store_factory(**kw)

    return make


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()


def row(seq: int, step: int, data: dict[str, Any], kind: str = "row", ts: float = 0.0) -> Any:
    return (kind, seq, ts or 1000.0 + step, {"step": step, "runtime": float(step), "data": data})


def values(s: Any) -> list[Any]:
    return list(s.last)


# ------------------------------------------------------------------ ingest


async def test_idempotent_and_overlapping_batches(store: Store) -> None:
    await store.upsert_run(P, "r1", name="one")
    batch = [row(i, i - 1, {"loss": float(i)}) for i in range(1, 11)]
    assert await store.append_events(P, "r1", batch) == 10
    assert await store.append_events(P, "r1", batch) == 10  # a retried batch
    overlap = [row(i, i - 1, {"loss": float(i)}) for i in range(5, 16)]
    assert await store.append_events(P, "r1", overlap) == 15
    assert await store.last_seq(P, "r1") == 15
    h = await store.history(P, ["r1"], ["loss"])
    s = h[("r1", "loss")]
    assert s.x == list(range(15))
    assert values(s) == [float(i) for i in range(1, 16)]
    assert s.count == [1] * 15
    assert not s.downsampled


async def test_gap_is_refused_with_expected_seq(store: Store) -> None:
    await store.upsert_run(P, "r1")
    await store.append_events(P, "r1", [row(1, 0, {"a": 1.0}), row(2, 1, {"a": 2.0})])
    with pytest.raises(SeqGapError) as err:
        await store.append_events(P, "r1", [row(4, 3, {"a": 4.0})])
    assert err.value.expected == 3
    assert err.value.got == 4
    # A gap inside a batch refuses the whole batch: nothing of it is stored.
    with pytest.raises(SeqGapError) as err:
        await store.append_events(P, "r1", [row(3, 2, {"a": 3.0}), row(5, 4, {"a": 5.0})])
    assert err.value.expected == 3
    assert await store.last_seq(P, "r1") == 2
    assert values((await store.history(P, ["r1"], ["a"]))[("r1", "a")]) == [1.0, 2.0]
    with pytest.raises(ValueError, match="increase"):
        await store.append_events(P, "r1", [row(4, 3, {"a": 1.0}), row(3, 2, {"a": 1.0})])


async def test_unknown_run(store: Store) -> None:
    assert await store.last_seq(P, "nope") == 0
    assert await store.get_run(P, "nope") is None
    with pytest.raises(RunNotFoundError):
        await store.append_events(P, "nope", [row(1, 0, {"a": 1})])


@pytest.mark.parametrize("split", [False, True])
async def test_row_replaces_partial_of_same_step(store: Store, split: bool) -> None:
    await store.upsert_run(P, "r1")
    first = [
        row(1, 0, {"a": 1.0}),
        row(2, 1, {"a": 5.0, "gone": 7.0, "note": "draft"}, kind="partial"),
        row(3, 1, {"a": 6.0, "gone": 8.0, "b": 1.0}, kind="partial"),
    ]
    second = [row(4, 1, {"a": 9.0, "b": 2.0}), row(5, 2, {"a": 3.0})]
    if split:
        await store.append_events(P, "r1", first)
        # The partial survives on its own (a crash before the row is committed).
        h = await store.history(P, ["r1"], ["a", "gone"])
        assert values(h[("r1", "a")]) == [1.0, 6.0]
        assert values(h[("r1", "gone")]) == [8.0]
        await store.append_events(P, "r1", second)
    else:
        await store.append_events(P, "r1", first + second)
    h = await store.history(P, ["r1"], ["a", "b", "gone"])
    assert h[("r1", "a")].x == [0, 1, 2]
    assert values(h[("r1", "a")]) == [1.0, 9.0, 3.0]
    assert values(h[("r1", "b")]) == [2.0]
    assert ("r1", "gone") not in h


async def test_nonfinite_round_trip(store: Store) -> None:
    await store.upsert_run(P, "r1", config={"eps": math.inf})
    data = [math.nan, math.inf, -math.inf, 1.5, 7, -0.0]
    evs = [row(i + 1, i, {"v": v}) for i, v in enumerate(data)]
    evs.append(("summary", 7, 2000.0, {"values": {"best": math.nan, "v": -math.inf}}))
    evs.append(("config", 8, 2000.0, {"values": {"lo": -math.inf}}))
    await store.append_events(P, "r1", evs)
    got = values((await store.history(P, ["r1"], ["v"]))[("r1", "v")])
    assert math.isnan(got[0])
    assert got[1:] == [math.inf, -math.inf, 1.5, 7, -0.0]
    assert type(got[4]) is int
    assert type(got[3]) is float
    assert math.copysign(1.0, got[5]) == -1.0
    run = await store.get_run(P, "r1")
    assert run is not None
    assert math.isnan(run.summary["best"])
    assert run.summary["v"] == -math.inf
    assert run.config == {"eps": math.inf, "lo": -math.inf}
    # Downsampled aggregates skip non-finite points but count them.
    ds = (await store.history(P, ["r1"], ["v"], buckets=1))[("r1", "v")]
    assert ds.downsampled
    assert ds.count == [6]
    assert ds.min == [-0.0]
    assert ds.max == [7.0]
    assert ds.first == [1.5]
    assert ds.last == [-0.0]


async def test_run_fields_events_and_resume(store: Store, clock: Clock) -> None:
    rec = await store.upsert_run(
        P, "r1", name="n", config={"lr": 0.1}, tags=["a"], group="g", notes="x", metadata={"h": 1}
    )
    assert (rec.state, rec.name, rec.tags, rec.group, rec.last_seq) == (
        "running",
        "n",
        ["a"],
        "g",
        0,
    )
    evs = [
        ("config", 1, 1.0, {"values": {"batch": 64}}),
        ("metadata", 2, 1.0, {"values": {"host": "h1"}}),
        ("summary", 3, 1.0, {"values": {"loss": 0.5, "acc": 0.9}}),
        ("summary_set", 4, 1.0, {"values": {"best": 1}, "deleted": ["acc"]}),
        (
            "metric",
            5,
            1.0,
            {
                "name": "val/*",
                "step_metric": "epoch",
                "step_sync": True,
                "hidden": False,
                "summary": ["max"],
                "goal": "maximize",
            },
        ),
        ("refused", 6, 1.0, {"step": 0, "current_step": 3, "data": {}, "reason": "low"}),
        ("finish", 7, 1.0, {"exit_code": 3}),
    ]
    await store.append_events(P, "r1", evs)
    run = await store.get_run(P, "r1")
    assert run is not None
    assert run.config == {"lr": 0.1, "batch": 64}
    assert run.metadata == {"h": 1, "host": "h1"}
    assert run.summary == {"loss": 0.5, "best": 1}
    assert run.metrics["val/*"]["step_metric"] == "epoch"
    assert (run.state, run.exit_code, run.last_seq) == ("failed", 3, 7)
    # A later summary snapshot replaces the summary.
    await store.append_events(P, "r1", [("summary", 8, 1.0, {"values": {"loss": 0.1}})])
    # Resume: only what is given changes; the run is running again.
    clock.t += 10
    res = await store.upsert_run(P, "r1", config={"lr": 0.2})
    assert res.name == "n"
    assert res.tags == ["a"]
    assert res.notes == "x"
    assert res.config == {"lr": 0.2, "batch": 64}
    assert res.summary == {"loss": 0.1}
    assert (res.state, res.exit_code, res.last_seq) == ("running", None, 8)
    assert res.heartbeat_ts == clock.t
    await store.append_events(P, "r1", [("finish", 9, 2.0, {"exit_code": 0})])
    done = await store.get_run(P, "r1")
    assert done is not None
    assert (done.state, done.exit_code) == ("finished", 0)


async def test_crashed_when_heartbeat_is_stale(make_store: StoreFactory, clock: Clock) -> None:
    store = await make_store(stale_after=120)
    await store.upsert_run(P, "live")
    await store.upsert_run(P, "quiet")
    await store.upsert_run(P, "done")
    await store.append_events(P, "done", [("finish", 1, 1.0, {"exit_code": 0})])
    clock.t += 100
    await store.append_events(P, "live", [row(1, 0, {"a": 1.0})])
    clock.t += 50  # "quiet" is 150 s old, "live" 50 s
    states = {r.run_id: r.state for r in (await store.list_runs(P))[0]}
    assert states == {"live": "running", "quiet": "crashed", "done": "finished"}
    quiet = await store.get_run(P, "quiet")
    assert quiet is not None
    assert quiet.state == "crashed"
    crashed, total = await store.list_runs(P, filters=[("state", "=", "crashed")])
    assert [r.run_id for r in crashed] == ["quiet"]
    assert total == 1
    # Any event brings it back.
    await store.append_events(P, "quiet", [("stats", 1, 1.0, {"runtime": 1.0, "values": {}})])
    quiet = await store.get_run(P, "quiet")
    assert quiet is not None
    assert quiet.state == "running"


# ------------------------------------------------------------------ runs query


RUNS: list[dict[str, Any]] = [
    {"id": "a", "name": "alpha", "config": {"lr": 0.1, "opt": {"name": "adam"}}, "tags": ["x"]},
    {"id": "b", "name": "beta", "config": {"lr": 0.01, "opt": {"name": "sgd"}}, "tags": ["x", "y"]},
    {"id": "c", "name": "Gamma", "config": {"lr": "auto"}, "tags": []},
    {"id": "d", "name": "delta", "config": {"lr": 1}, "tags": ["y"]},
    {"id": "e", "name": "épsilon", "config": {"lr": True}, "tags": ["z"]},
    {"id": "f", "name": "zeta", "config": {}, "tags": []},
    {"id": "g", "name": "eta", "config": {"lr": 0.001, "opt": {"name": "adamw"}}, "tags": ["x"]},
]
SUMMARY = {"a": 0.5, "b": 0.25, "c": 2, "d": None, "e": "n/a", "f": 0.25, "g": math.nan}


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _ref_filter(run: dict[str, Any], field: str, op: str, value: Any) -> bool:
    """The documented filter semantics, in Python."""
    if field == "tags":
        return value in run["tags"]
    if field == "name":
        have: Any = run["name"]
        present = True
    else:
        col, _, path = field.partition(".")
        have = run[col]
        present = True
        for seg in path.split("."):
            if isinstance(have, dict) and seg in have:
                have = have[seg]
            else:
                present = False
                break
    if op == "!=":
        return not _ref_filter(run, field, "=", value)
    if value is None:
        return not present or have is None
    if not present:
        return False
    if isinstance(value, bool):
        return have is value
    if isinstance(value, int | float):
        if not _num(have):
            return False
    elif not isinstance(have, str):
        return False
    elif op == "contains":
        return value in have
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return ops[op](have, value)


def _ref_sort(runs: list[dict[str, Any]], field: str) -> list[str]:
    desc = field.startswith("-")
    name = field.lstrip("-")
    col, _, key = name.partition(".")

    def get(r: dict[str, Any]) -> Any:
        if not key:
            return r[col]
        v: Any = r[col]
        for seg in key.split("."):
            v = v.get(seg) if isinstance(v, dict) else None
        return v

    def rank(v: Any) -> int:
        return 0 if _num(v) else 1 if isinstance(v, str) else 2

    present = [r for r in runs if rank(get(r)) < 2]
    missing = [r for r in runs if rank(get(r)) == 2]
    present.sort(
        key=lambda r: (rank(get(r)), get(r) if rank(get(r)) == 0 else 0, str(get(r)), r["n"]),
        reverse=desc,
    )
    missing.sort(key=lambda r: r["n"], reverse=desc)
    return [r["id"] for r in present + missing]


async def _seed_runs(store: Store, clock: Clock) -> list[dict[str, Any]]:
    out = []
    for n, spec in enumerate(RUNS):
        clock.t += 1  # distinct creation times, so created order is known
        await store.upsert_run(
            P, spec["id"], name=spec["name"], config=spec["config"], tags=spec["tags"]
        )
        summ = {"loss": SUMMARY[spec["id"]]} if spec["id"] != "f" else {}
        await store.append_events(P, spec["id"], [("summary", 1, 1.0, {"values": summ})])
        out.append({**spec, "summary": summ, "n": n})
    return out


FILTERS: list[tuple[str, str, Any]] = [
    ("config.lr", "=", 0.1),
    ("config.lr", "!=", 0.1),
    ("config.lr", "<", 0.05),
    ("config.lr", ">=", 0.01),
    ("config.lr", ">", 0),
    ("config.lr", "=", 1),
    ("config.lr", "=", "auto"),
    ("config.lr", "=", True),
    ("config.lr", "=", None),
    ("config.lr", "!=", None),
    ("config.opt.name", "contains", "adam"),
    ("config.opt.name", ">", "adam"),
    ("summary.loss", "<=", 0.25),
    ("summary.loss", "=", None),
    ("summary.loss", "contains", "/"),
    ("name", "contains", "eta"),
    ("name", ">", "delta"),
    ("name", "<", "beta"),
    ("tags", "contains", "x"),
]


async def test_filters_match_reference(store: Store, clock: Clock) -> None:
    runs = await _seed_runs(store, clock)
    for f in FILTERS:
        got, total = await store.list_runs(P, filters=[f], sort="created", limit=100)
        want = [r["id"] for r in runs if _ref_filter(r, *f)]
        assert [r.run_id for r in got] == want, f
        assert total == len(want), f
    # Filters combine with AND, and paging keeps the total.
    both = [("tags", "contains", "x"), ("config.lr", ">", 0.005)]
    page, total = await store.list_runs(P, filters=both, sort="created", limit=1, offset=1)
    assert total == 2
    assert [r.run_id for r in page] == ["b"]


@pytest.mark.parametrize(
    "sort",
    [
        "created",
        "-created",
        "config.lr",
        "-config.lr",
        "summary.loss",
        "-summary.loss",
        "name",
        "-name",
        "config.opt.name",
    ],
)
async def test_sorts_match_reference(store: Store, clock: Clock, sort: str) -> None:
    runs = await _seed_runs(store, clock)
    got, total = await store.list_runs(P, sort=sort, limit=100)
    assert total == len(runs)
    if sort.lstrip("-") == "created":
        want = [r["id"] for r in sorted(runs, key=lambda r: r["n"], reverse=sort[0] == "-")]
    else:
        want = _ref_sort(runs, sort)
    assert [r.run_id for r in got] == want


async def test_bad_filters_name_the_field(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown run field"):
        await store.list_runs(P, filters=[("bogus", "=", 1)])
    with pytest.raises(ValueError, match="unknown filter op"):
        await store.list_runs(P, filters=[("config.lr", "~", 1)])
    with pytest.raises(ValueError, match="text"):
        await store.list_runs(P, filters=[("name", ">", 1)])
    with pytest.raises(ValueError, match="finite"):
        await store.list_runs(P, filters=[("config.lr", ">", math.nan)])


async def test_projects(store: Store, clock: Clock) -> None:
    await store.upsert_run("b", "r1")
    clock.t += 5
    await store.upsert_run("a", "r1")
    await store.upsert_run("a", "r2")
    projects = await store.list_projects()
    assert [(p.name, p.run_count, p.last_activity) for p in projects] == [
        ("a", 2, clock.t),
        ("b", 1, clock.t - 5),
    ]


# ------------------------------------------------------------------ history


def _ref_buckets(
    points: list[tuple[int, float, float]], n: int, lo: float, hi: float, is_step: bool
) -> list[tuple[float, int, Any, Any, Any, Any]]:
    """(x0, count, min, max, first, last) per non-empty bucket; points: (step, x, value)."""
    out: dict[int, list[tuple[int, float, float]]] = {}
    for p in points:
        if is_step:
            b = ((int(p[1]) - int(lo)) * n) // (int(hi) - int(lo) + 1)
        else:
            w = (hi - lo) or 1.0
            b = min(n - 1, math.floor(((p[1] - lo) * n) / w))
        out.setdefault(b, []).append(p)
    res = []
    for b in sorted(out):
        ps = sorted(out[b])
        fin = [p for p in ps if math.isfinite(p[2])]
        res.append(
            (
                min(p[1] for p in ps),
                len(ps),
                min((p[2] for p in fin), default=None),
                max((p[2] for p in fin), default=None),
                fin[0][2] if fin else None,
                fin[-1][2] if fin else None,
            )
        )
    return res


def _as_rows(s: Any) -> list[tuple[float, int, Any, Any, Any, Any]]:
    return list(zip(s.x, s.count, s.min, s.max, s.first, s.last, strict=True))


@pytest.mark.parametrize("x", ["_step", "_runtime"])
async def test_downsampling_matches_reference(store: Store, x: str) -> None:
    rnd = random.Random(5)
    await store.upsert_run(P, "r1")
    points = []
    runtime = 0.0
    evs = []
    step = 0
    for seq in range(1, 3001):
        step += rnd.choice((1, 1, 1, 2, 7))  # gaps in the steps
        runtime += rnd.random()
        v = rnd.choice((math.nan, math.inf)) if rnd.random() < 0.03 else rnd.gauss(0, 10)
        evs.append(
            ("row", seq, 1000.0 + runtime, {"step": step, "runtime": runtime, "data": {"m": v}})
        )
        points.append((step, float(step) if x == "_step" else runtime, v))
    for i in range(0, len(evs), 500):
        await store.append_events(P, "r1", evs[i : i + 500])
    for n, rng in ((37, None), (1000, None), (50, (points[100][1], points[2000][1]))):
        kw: dict[str, Any] = {}
        sel = points
        if rng is not None:
            kw = {"x_min": rng[0], "x_max": rng[1]}
            sel = [p for p in points if rng[0] <= p[1] <= rng[1]]
        s = (await store.history(P, ["r1"], ["m"], x=x, buckets=n, **kw))[("r1", "m")]
        assert s.downsampled
        lo, hi = rng if rng else (sel[0][1], sel[-1][1])
        want = _ref_buckets(sel, n, lo, hi, x == "_step")
        got = _as_rows(s)
        assert len(got) == len(want) <= n
        for g, w in zip(got, want, strict=True):
            assert g[:2] == pytest.approx(w[:2])
            assert g[2:] == w[2:]
        assert sum(s.count) == len(sel)
        assert s.cursor == sel[-1][0]
    # Few enough points: raw, exact.
    raw = (await store.history(P, ["r1"], ["m"], x=x, buckets=5000))[("r1", "m")]
    assert not raw.downsampled
    assert len(raw.x) == 3000


async def test_cursor_returns_only_new_points(store: Store) -> None:
    await store.upsert_run(P, "r1")
    await store.append_events(P, "r1", [row(i + 1, i, {"a": float(i)}) for i in range(2000)])
    s = (await store.history(P, ["r1"], ["a"], buckets=100))[("r1", "a")]
    assert s.downsampled
    assert s.cursor == 1999
    assert await store.history(P, ["r1"], ["a"], after=s.cursor) == {}
    await store.append_events(P, "r1", [row(2001 + i, 2000 + i, {"a": -1.0}) for i in range(3)])
    new = (await store.history(P, ["r1"], ["a"], after=s.cursor))[("r1", "a")]
    assert not new.downsampled
    assert new.x == [2000, 2001, 2002]
    assert new.cursor == 2002


async def test_x_axis_by_another_metric(store: Store) -> None:
    await store.upsert_run(P, "r1")
    evs = []
    for i in range(40):
        data: dict[str, Any] = {"loss": 100.0 - i}
        if i % 4 == 0:
            data["epoch"] = i // 4  # only some steps carry the x metric
        evs.append(row(i + 1, i, data))
    await store.append_events(P, "r1", evs)
    s = (await store.history(P, ["r1"], ["loss"], x="epoch"))[("r1", "loss")]
    assert s.x == list(range(10))
    assert values(s) == [100.0 - 4 * e for e in range(10)]
    ds = (await store.history(P, ["r1"], ["loss"], x="epoch", buckets=5))[("r1", "loss")]
    assert ds.count == [2] * 5
    assert ds.first == [100.0, 92.0, 84.0, 76.0, 68.0]
    assert await store.history(P, ["r1"], ["loss"], x="unknown") == {}


async def test_many_runs_and_keys_and_system(store: Store) -> None:
    for rid in ("r1", "r2"):
        await store.upsert_run(P, rid)
        await store.append_events(
            P,
            rid,
            [
                row(1, 0, {"a": 1.0, "b": 2.0, "img": {"path": "media/x.png", "sha256": "0"}}),
                ("stats", 2, 5.0, {"runtime": 1.0, "values": {"system/cpu": 10.0}}),
                ("stats", 3, 6.0, {"runtime": 2.0, "values": {"system/cpu": math.nan}}),
            ],
        )
    h = await store.history(P, ["r1", "r2", "missing"], ["a", "b", "img"])
    assert sorted(h) == [("r1", "a"), ("r1", "b"), ("r2", "a"), ("r2", "b")]
    sysh = await store.history(P, ["r1"], ["system/cpu"], source="system", x="_runtime")
    s = sysh[("r1", "system/cpu")]
    assert s.x == [1.0, 2.0]
    assert s.first[0] == 10.0
    assert math.isnan(s.first[1])


# ------------------------------------------------------------------ history from rollup blocks

ROLLUP_COLS = (
    "run, key, level, block, n, smin, smax, vmin, vmax, fstep, fval, lstep, lval, "
    "rtmin, rtmax, tsmin, tsmax, nf"
)


async def _sql(store: Store, query: str) -> list[tuple[Any, ...]]:
    """Run SQL on the store's own database (the tests look behind the protocol here)."""
    if hasattr(store, "_call"):  # SQLite: on the store's worker thread
        db = store._db  # type: ignore[attr-defined]
        return await store._call(lambda: [tuple(r) for r in db().execute(query)])  # type: ignore[attr-defined]
    pool = store._p()  # type: ignore[attr-defined]
    return [tuple(r) for r in await pool.fetch(query)]


async def _rollups(store: Store) -> list[tuple[Any, ...]]:
    out = []
    for table in ("series_rollup", "system_rollup"):
        out += await _sql(
            store, f"SELECT {ROLLUP_COLS} FROM {table} ORDER BY run, key, level, block"
        )
    return out


Model = dict[tuple[str, int], tuple[float, float, Any]]


def _scenario(seed: int) -> tuple[list[list[Any]], Model]:
    """Batches that exercise every ingest case, and the points they must leave stored.

    In-order rows with gaps (from a negative step), rows rewriting old steps
    out of order (as an API client may send), a partial replaced by a fuller
    partial and then by the row (deleting keys), non-finite values, ints, -0.0
    and strings; the model applies the store's documented rules in Python.
    """
    rnd = random.Random(seed)
    events: list[Any] = []
    model: Model = {}
    partial: list[Any] = [None, []]

    def value() -> Any:
        r = rnd.random()
        if r < 0.03:
            return rnd.choice((math.nan, math.inf, -math.inf))
        if r < 0.05:
            return rnd.choice((-0.0, rnd.randint(-50, 50)))
        return rnd.gauss(0, 10)

    def emit(kind: str, step: int, data: dict[str, Any]) -> None:
        runtime = step * 0.5 + 0.25  # increasing with the step, whatever the order
        events.append(
            (
                kind,
                len(events) + 1,
                1000.0 + runtime,
                {"step": step, "runtime": runtime, "data": data},
            )
        )
        if partial[0] == step:
            for k in partial[1]:
                model.pop((k, step), None)
        for k, v in data.items():
            if not isinstance(v, str):
                model[(k, step)] = (runtime, 1000.0 + runtime, v)
        if kind == "partial":
            partial[:] = [step, list(data)]
        elif partial[0] == step:
            partial[:] = [None, []]

    step = -60  # an API client may log negative steps
    for _ in range(6000):
        step += rnd.choice((1, 1, 1, 2, 5))
        data: dict[str, Any] = {"m": value()}
        if rnd.random() < 0.7:
            data["n"] = value()
        if rnd.random() < 0.05:
            data["note"] = "text"
        emit("row", step, data)
    for _ in range(200):
        emit("row", rnd.randint(-60, step), {"m": value(), "n": value()})
    step += 3
    emit("partial", step, {"m": 1.0, "gone": 2.0, "note": "draft"})
    emit("partial", step, {"m": 3.0, "gone": 4.0})
    emit("row", step, {"m": 5.0})
    for _ in range(500):
        step += 1
        emit("row", step, {"m": value(), "n": value()})
    batches = []
    i = 0
    while i < len(events):
        n = rnd.choice((1, 7, 300, 700))
        batches.append(events[i : i + n])
        i += n
    return batches, model


def _points(model: Model, key: str, x: str) -> list[tuple[int, float, Any]]:
    col = {"_step": None, "_runtime": 0, "_timestamp": 1}[x]
    return sorted(
        (s, float(s) if col is None else v[col], v[2]) for (k, s), v in model.items() if k == key
    )


def _check_whole_blocks(
    s: Any, pts: list[tuple[int, float, Any]], buckets: int, lo: float, hi: float, is_step: bool
) -> None:
    """Each returned bucket holds the exact aggregates of the points from its x to the next x.

    ``pts``: (step, x, value) of the points in range, by step. For the step
    axis, a bucket also stays within one block of where the bucket formula
    puts it: its points fall in the formula's bucket of its x or the next.
    """
    assert s.downsampled
    xs = s.x
    assert 0 < len(xs) <= buckets
    assert all(a < b for a, b in itertools.pairwise(xs))
    groups: list[list[tuple[int, float, Any]]] = [[] for _ in xs]
    for p in pts:
        i = bisect.bisect_right(xs, p[1]) - 1
        assert i >= 0, p
        groups[i].append(p)
    for g, got in zip(groups, _as_rows(s), strict=True):
        fin = [p for p in g if math.isfinite(p[2])]
        want = (
            min(p[1] for p in g),
            len(g),
            min((p[2] for p in fin), default=None),
            max((p[2] for p in fin), default=None),
            fin[0][2] if fin else None,
            fin[-1][2] if fin else None,
        )
        assert got == want
    assert s.cursor == max(p[0] for p in pts)
    if is_step:

        def ideal(x: float) -> int:
            return ((int(x) - int(lo)) * buckets) // (int(hi) - int(lo) + 1)

        for x0, g in zip(xs, groups, strict=True):
            assert {ideal(p[1]) for p in g} <= {ideal(x0), ideal(x0) + 1}


@pytest.mark.parametrize("x", ["_step", "_runtime", "_timestamp"])
async def test_rollup_buckets_are_exact_after_every_ingest_case(
    make_store: StoreFactory, x: str
) -> None:
    # exact_points=0: every downsampled query that blocks can answer uses them.
    store = await make_store(exact_points=0)
    await store.upsert_run(P, "r1")
    batches, model = _scenario(7)
    for b in batches:
        await store.append_events(P, "r1", b)
    rnd = random.Random(3)
    for key in ("m", "n"):
        pts = _points(model, key, x)
        for buckets in (1, 3, 50, 300):
            for zoom in (False, True):
                sel, kw = pts, {}
                lo, hi = pts[0][1], pts[-1][1]
                if zoom:
                    a, b = sorted(rnd.sample(range(len(pts)), 2))
                    lo, hi = pts[a][1] - 0.3, pts[b][1] + 0.3
                    kw = {"x_min": lo, "x_max": hi}
                    sel = [p for p in pts if lo <= p[1] <= hi]
                s = (await store.history(P, ["r1"], [key], x=x, buckets=buckets, **kw))[("r1", key)]
                if len(sel) <= buckets:
                    assert not s.downsampled
                    assert s.x == [p[1] for p in sel]
                    continue
                _check_whole_blocks(s, sel, buckets, lo, hi, x == "_step")
    # A deleted key leaves no block behind.
    assert ("r1", "gone") not in await store.history(P, ["r1"], ["gone"], x=x, buckets=1)


async def _block_counts(store: Store, table: str) -> dict[tuple[str, int, int], tuple[int, int]]:
    """``{(key, level, block): (n, nf)}`` of the stored rollup blocks of ``table``."""
    rows = await _sql(
        store,
        f"SELECT k.name, r.level, r.block, r.n, r.nf FROM {table}_rollup r "
        "JOIN keys k ON k.id = r.key",
    )
    return {(k, int(lv), int(b)): (int(n), int(nf)) for k, lv, b, n, nf in rows}


def _want_counts(
    points: list[tuple[str, int, Any]],
) -> dict[tuple[str, int, int], tuple[int, int]]:
    """What :func:`_block_counts` must say for ``(key, step, value)`` points."""
    out: dict[tuple[str, int, int], tuple[int, int]] = {}
    for k, step, v in points:
        finite = v is not None and math.isfinite(v)
        for shift in (4, 7, 10, 13):
            n, nf = out.get((k, shift, step >> shift), (0, 0))
            out[(k, shift, step >> shift)] = (n + 1, nf + finite)
    return out


async def test_rollup_finite_counts_stay_exact_through_every_ingest_case(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    await store.upsert_run(P, "r1")
    batches, model = _scenario(5)
    for b in batches:
        # Appends (merged), rewrites out of order, a partial replaced and
        # deleted keys (recomputed), NaN and infinities among the values.
        await store.append_events(P, "r1", b)
        stored = await _sql(
            store, "SELECT k.name, s.step, s.value FROM series s JOIN keys k ON k.id = s.key"
        )
        assert await _block_counts(store, "series") == _want_counts(
            [(k, int(st), v) for k, st, v in stored]
        )
    final = [(k, st, float(v[2])) for (k, st), v in model.items()]
    assert any(not math.isfinite(v) for _, _, v in final)
    assert await _block_counts(store, "series") == _want_counts(final)
    seq = sum(len(b) for b in batches)
    cpu = [math.nan if i % 5 == 0 else (math.inf if i % 7 == 0 else float(i)) for i in range(40)]
    for base in (0, 20):  # the second batch merges into the first one's blocks
        await store.append_events(
            P,
            "r1",
            [
                ("stats", seq + i + 1, 5.0 + i, {"runtime": 1.0, "values": {"c": cpu[i]}})
                for i in range(base, base + 20)
            ],
        )
    assert await _block_counts(store, "system") == _want_counts(
        [("c", i, v) for i, v in enumerate(cpu)]
    )


async def test_rollup_blocks_equal_a_rebuild_and_migration_2_backfills(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    await store.upsert_run(P, "r1")
    batches, _ = _scenario(11)
    for b in batches:
        await store.append_events(P, "r1", b)
    await store.append_events(
        P,
        "r1",
        [
            (
                "stats",
                sum(len(b) for b in batches) + i + 1,
                5.0 + i,
                {"runtime": float(i), "values": {"cpu": i % 7}},
            )
            for i in range(100)
        ],
    )
    kept = await _rollups(store)
    assert kept
    # What ingest maintained equals what migrations 2 and 4 build from the
    # points: undo them and open the store again, which applies them.
    await _sql(store, "DROP TABLE series_rollup")
    await _sql(store, "DROP TABLE system_rollup")
    await _sql(store, "DELETE FROM schema_version WHERE version IN (2, 4)")
    await store.aclose()
    again = await make_store()
    assert await _rollups(again) == kept


async def test_large_series_buckets_are_whole_blocks(store: Store) -> None:
    await store.upsert_run(P, "r1")
    n = 40_000
    for s0 in range(0, n, 10_000):
        await store.append_events(
            P,
            "r1",
            [row(s + 1, s, {"a": float((s * 7919) % 1000)}) for s in range(s0, s0 + 10_000)],
        )
    s = (await store.history(P, ["r1"], ["a"], buckets=1000))[("r1", "a")]
    # 40 steps a bucket: blocks of 16 steps, each bucket starting at a block edge.
    assert all(x % 16 == 0 for x in s.x)
    pts = [(i, float(i), float((i * 7919) % 1000)) for i in range(n)]
    _check_whole_blocks(s, pts, 1000, 0, n - 1, True)
    assert len(s.x) > 900  # whole blocks, yet close to the buckets asked for


async def test_overlapping_x_blocks_fall_back_to_exact_buckets(make_store: StoreFactory) -> None:
    store = await make_store(exact_points=0)
    await store.upsert_run(P, "r1")
    rnd = random.Random(2)
    pts = []
    evs = []
    for i in range(3000):
        runtime = rnd.random() * 100  # no order at all: blocks overlap in x
        v = rnd.gauss(0, 1)
        evs.append(
            ("row", i + 1, 1000.0 + runtime, {"step": i, "runtime": runtime, "data": {"m": v}})
        )
        pts.append((i, runtime, v))
    await store.append_events(P, "r1", evs)
    s = (await store.history(P, ["r1"], ["m"], x="_runtime", buckets=40))[("r1", "m")]
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    want = _ref_buckets(pts, 40, lo, hi, False)
    got = _as_rows(s)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:2] == pytest.approx(w[:2])
        assert g[2:] == w[2:]


async def test_metric_x_axis_downsamples_from_blocks_when_logged_together(
    make_store: StoreFactory,
) -> None:
    # exact_points=0: every downsampled query that blocks can answer uses them.
    store = await make_store(exact_points=0)
    n = 4_000
    rnd = random.Random(4)
    tokens = 0
    pts: dict[str, list[tuple[int, float, Any]]] = {
        "tokens": [],
        "noise": [],
        "half": [],
        "gap": [],
    }
    await store.upsert_run(P, "r1")
    evs = []
    for step in range(n):
        tokens += rnd.randint(1, 1000)  # strictly increasing, unevenly
        loss = rnd.choice((math.nan, math.inf)) if rnd.random() < 0.01 else rnd.gauss(0, 1)
        noise = rnd.gauss(0, 1)  # logged at every step, but no order: blocks overlap in x
        data: dict[str, Any] = {"loss": loss, "tokens": tokens, "noise": noise}
        if step % 2 == 0:  # ordered, but logged at half the steps
            data["half"] = tokens
        # Ordered and at every step, but one x is not finite: that step drops out.
        data["gap"] = math.nan if step == 1_234 else tokens
        evs.append(row(step + 1, step, data))
        for k in pts:
            x = data.get(k)
            if x is not None and math.isfinite(x):
                pts[k].append((step, float(x), loss))
    for i in range(0, n, 1_000):
        await store.append_events(P, "r1", evs[i : i + 1_000])

    async def query(x: str, **kw: Any) -> Any:
        return (await store.history(P, ["r1"], ["loss"], x=x, buckets=100, **kw))[("r1", "loss")]

    # Logged together: whole blocks, so every bucket starts a 16-step block.
    all_tok = pts["tokens"]
    s = await query("tokens")
    step_of = {p[1]: p[0] for p in all_tok}
    assert all(step_of[x] % 16 == 0 for x in s.x)
    _check_whole_blocks(s, all_tok, 100, all_tok[0][1], all_tok[-1][1], False)
    # Zoomed in x units: blocks inside, the edge blocks' points in range one by one.
    lo, hi = all_tok[500][1] - 0.5, all_tok[3_500][1] + 0.5
    z = await query("tokens", x_min=lo, x_max=hi)
    _check_whole_blocks(z, [p for p in all_tok if lo <= p[1] <= hi], 100, lo, hi, False)
    assert sum(step_of[x] % 16 != 0 for x in z.x) <= 2
    # A non-finite x in an edge block: its points come raw, the rest whole blocks.
    gap = pts["gap"]
    step_at = {p[0]: p[1] for p in gap}
    lo, hi = step_at[1_233] - 0.5, step_at[3_500] + 0.5
    z = await query("gap", x_min=lo, x_max=hi)
    _check_whole_blocks(z, [p for p in gap if lo <= p[1] <= hi], 100, lo, hi, False)
    assert sum(step_of[x] % 16 != 0 for x in z.x) <= 2
    # ... in a block used whole: exact buckets where the formula puts them.
    lo = step_at[1_000] - 0.5
    got = _as_rows(await query("gap", x_min=lo, x_max=hi))
    want = _ref_buckets([p for p in gap if lo <= p[1] <= hi], 100, lo, hi, False)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:2] == pytest.approx(w[:2])
        assert g[2:] == w[2:]
    # Otherwise: exact buckets where the formula puts them, zoomed or not.
    half = pts["half"]
    lo, hi = half[250][1] - 0.5, half[1_750][1] + 0.5
    got = _as_rows(await query("half", x_min=lo, x_max=hi))
    want = _ref_buckets([p for p in half if lo <= p[1] <= hi], 100, lo, hi, False)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:2] == pytest.approx(w[:2])
        assert g[2:] == w[2:]
    for key in ("noise", "half", "gap"):
        sel = pts[key]
        got = _as_rows(await query(key))
        want = _ref_buckets(sel, 100, min(p[1] for p in sel), max(p[1] for p in sel), False)
        assert len(got) == len(want), key
        for g, w in zip(got, want, strict=True):
            assert g[:2] == pytest.approx(w[:2])
            assert g[2:] == w[2:]


async def test_system_metrics_downsample_from_blocks(make_store: StoreFactory) -> None:
    store = await make_store(exact_points=0)
    await store.upsert_run(P, "r1")
    vals = [math.nan if i % 97 == 0 else float((i * 31) % 101) for i in range(3000)]
    await store.append_events(
        P,
        "r1",
        [
            ("stats", i + 1, 2000.0 + i, {"runtime": i * 2.0, "values": {"system/cpu": v}})
            for i, v in enumerate(vals)
        ],
    )
    for x, scale in (("_step", 1.0), ("_runtime", 2.0)):
        s = (await store.history(P, ["r1"], ["system/cpu"], x=x, buckets=30, source="system"))[
            ("r1", "system/cpu")
        ]
        pts = [(i, i * scale, v) for i, v in enumerate(vals)]
        _check_whole_blocks(s, pts, 30, 0, 2999 * scale, x == "_step")


# ------------------------------------------------------------------ keys and values


async def test_run_keys_lists_each_kind_sorted(store: Store) -> None:
    await store.upsert_run(P, "r1")
    await store.upsert_run(P, "other")
    await store.append_events(
        P,
        "r1",
        [
            row(1, 0, {"train/loss": 1.0, "acc": 2, "img": {"path": "media/a.png", "sha256": "0"}}),
            row(2, 1, {"acc": "n/a", "note": "hi", "flag": True, "nan": math.nan}),
            ("stats", 3, 5.0, {"runtime": 1.0, "values": {"system/gpu": 1.0, "system/cpu": 2.0}}),
        ],
    )
    await store.append_events(P, "other", [row(1, 0, {"zzz": 1.0, "yyy": "s"})])
    assert await store.run_keys(P, "r1") == {
        "history": ["acc", "nan", "train/loss"],
        "values": ["acc", "flag", "img", "note"],
        "system": ["system/cpu", "system/gpu"],
    }
    assert await store.run_keys(P, "missing") == {"history": [], "values": [], "system": []}
    assert await store.run_keys("nope", "r1") == {"history": [], "values": [], "system": []}


async def test_values_in_step_then_key_order_with_a_cursor(store: Store) -> None:
    await store.upsert_run(P, "r1")
    evs = []
    for i in range(10):
        data: dict[str, Any] = {"loss": float(i), "caption": f"c{i}"}
        if i % 3 == 0:
            data["img"] = {"path": f"media/{i}.png", "sha256": str(i), "nf": math.nan}
        evs.append(row(i + 1, i * 2, data))
    await store.append_events(P, "r1", evs)
    want = []
    for i in range(10):
        want.append(("caption", i * 2, f"c{i}"))
        if i % 3 == 0:
            want.append(
                ("img", i * 2, {"path": f"media/{i}.png", "sha256": str(i), "nf": math.nan})
            )
    got = await store.values(P, "r1", ["img", "caption", "loss", "unknown"])
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert math.isnan(got[1][2]["nf"])  # values decode exactly, NaN included
    assert [g[2] for g in got if g[0] == "caption"] == [f"c{i}" for i in range(10)]
    # Paging by the last step seen returns every value once; a page never
    # splits a step, so it may hold fewer than ``limit`` values.
    pages: list[list[Any]] = []
    cursor = None
    while True:
        page = await store.values(P, "r1", ["caption", "img"], after_step=cursor, limit=3)
        if not page:
            break
        assert len(page) <= 3
        pages.append(page)
        cursor = page[-1][1]
    flat = [v[:2] for p in pages for v in p]
    assert flat == [w[:2] for w in want]
    assert len(pages[0]) == 3  # step 0 (2 values) + step 2 (1 value)
    assert await store.values(P, "r1", ["caption"], after_step=18) == []
    assert await store.values(P, "missing", ["caption"]) == []
    with pytest.raises(ValueError, match="limit"):
        await store.values(P, "r1", ["caption"], limit=0)


async def test_values_limit_of_one_still_returns_a_whole_step(store: Store) -> None:
    await store.upsert_run(P, "r1")
    await store.append_events(P, "r1", [row(1, 0, {"a": "x", "b": "y"}), row(2, 1, {"a": "z"})])
    assert await store.values(P, "r1", ["a", "b"], limit=1) == [("a", 0, "x"), ("b", 0, "y")]
    assert await store.values(P, "r1", ["a", "b"], after_step=0, limit=1) == [("a", 1, "z")]


# ------------------------------------------------------------------ output, files


async def test_output_paging(store: Store) -> None:
    await store.upsert_run(P, "r1")
    await store.append_events(
        P,
        "r1",
        [
            ("output", 1, 1.0, {"stream": "stdout", "text": "one\ntwo\n"}),
            ("output", 2, 2.0, {"stream": "stderr", "text": "three"}),
        ],
    )
    await store.append_events(P, "r1", [("output", 3, 3.0, {"stream": "stdout", "text": "four\n"})])
    lines = await store.output(P, "r1")
    assert [(line.line_no, line.stream, line.text) for line in lines] == [
        (1, "stdout", "one"),
        (2, "stdout", "two"),
        (3, "stderr", "three"),
        (4, "stdout", "four"),
    ]
    page = await store.output(P, "r1", after_line=1, limit=2)
    assert [line.line_no for line in page] == [2, 3]
    assert await store.output(P, "r1", after_line=4) == []


async def test_files(store: Store) -> None:
    await store.upsert_run(P, "r1")
    await store.append_events(
        P,
        "r1",
        [
            ("file", 1, 1.0, {"path": "media/b.png", "sha256": "aa", "size": 3}),
            ("file", 2, 2.0, {"path": "a.txt", "sha256": "bb", "size": 4}),
            ("file", 3, 3.0, {"path": "media/b.png", "sha256": "cc", "size": 5}),
        ],
    )
    files = await store.files(P, "r1")
    assert [(f.path, f.sha256, f.size, f.ts) for f in files] == [
        ("a.txt", "bb", 4, 2.0),
        ("media/b.png", "cc", 5, 3.0),
    ]


# ------------------------------------------------------------------ lifecycle


async def test_a_batch_needs_one_connection_only(
    request: pytest.FixtureRequest, store: Store
) -> None:
    if "sqlite" in request.node.callspec.id:
        pytest.skip("SQLite has one connection and no pool")
    # Hold every pooled connection but one: a batch that needed a second one
    # (new key ids, keys of a deleted partial) would wait forever.
    pool = store._p()  # type: ignore[attr-defined]
    held = [await pool.acquire() for _ in range(pool.get_max_size() - 1)]
    try:
        with anyio.fail_after(20):
            await store.upsert_run(P, "r1")
            await store.append_events(P, "r1", [row(1, 0, {"a": 1.0, "b": 2.0}, kind="partial")])
            store._keys.clear()  # type: ignore[attr-defined]  # as in another process
            await store.append_events(
                P, "r1", [row(2, 0, {"a": 3.0, "c": "x"}), row(3, 1, {"d": 4.0})]
            )
            h = await store.history(P, ["r1"], ["a", "b", "d"])
    finally:
        for conn in held:
            await pool.release(conn)
    assert {k: values(s) for k, s in h.items()} == {("r1", "a"): [3.0], ("r1", "d"): [4.0]}


async def test_migrations_twice_are_harmless(make_store: StoreFactory) -> None:
    first = await make_store()
    await first.upsert_run(P, "r1")
    await first.append_events(P, "r1", [row(1, 0, {"a": 1.0})])
    await first.migrate()  # type: ignore[attr-defined]
    second = await make_store()  # opening again migrates again
    want = [m.version for m in MIGRATIONS]
    assert await second.schema_versions() == want  # type: ignore[attr-defined]
    assert await second.last_seq(P, "r1") == 1
    await first.aclose()
    await first.aclose()  # idempotent
    with pytest.raises(Exception, match="closed"):
        await first.last_seq(P, "r1")
