"""One suite for every store backend: each test runs on SQLite and on PostgreSQL.

PostgreSQL tests use 127.0.0.1:5432, database ``test`` (override with
``RUNBUS_TEST_POSTGRES_DSN``), each in a fresh schema dropped afterwards. When
the server is unreachable they skip, unless ``RUNBUS_TEST_POSTGRES=1`` (CI),
where they fail instead. Expected results come from Python references, so two
backends that pass agree with each other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from server.store import RunNotFoundError, SeqGapError, Store

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


async def test_migrations_twice_are_harmless(make_store: StoreFactory) -> None:
    first = await make_store()
    await first.upsert_run(P, "r1")
    await first.append_events(P, "r1", [row(1, 0, {"a": 1.0})])
    await first.migrate()  # type: ignore[attr-defined]
    second = await make_store()  # opening again migrates again
    assert await second.schema_versions() == [1]  # type: ignore[attr-defined]
    assert await second.last_seq(P, "r1") == 1
    await first.aclose()
    await first.aclose()  # idempotent
    with pytest.raises(Exception, match="closed"):
        await first.last_seq(P, "r1")
