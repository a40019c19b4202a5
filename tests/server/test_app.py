"""The HTTP API over both stores, through a real server on loopback.

PostgreSQL tests follow tests/server/test_store.py: a fresh schema per test on
127.0.0.1:5432/test (or ``RUNBUS_TEST_POSTGRES_DSN``); skipped when unreachable
unless ``RUNBUS_TEST_POSTGRES=1``, where they fail.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from apiclient import request, row
from yarl import URL

from pipeline import jsoncodec
from server.app import KEYS_KEY, Limits, make_app
from server.store import Store

pytestmark = pytest.mark.anyio
# The store_factory fixture (tests/server/conftest.py) opens stores on the test's database.
StoreFactory = Callable[..., Awaitable[Store]]
P = "proj"


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()


@dataclass
class Srv:
    """A running server, its keys, and a session that sends URLs unnormalised."""

    base: str
    session: aiohttp.ClientSession
    admin: str
    writer: str  # write on P
    reader: str  # read on P
    other: str  # write on "other" only
    data_dir: Path

    def url(self, path: str) -> URL:
        # encoded=True: send the path byte for byte ('..' and '%2F' included).
        return URL(self.base + path, encoded=True)

    async def req(
        self, method: str, path: str, key: str | None = "admin", **kw: Any
    ) -> tuple[int, Any]:
        secret = None if key is None else getattr(self, key)
        r, raw = await request(self.session, self.base, method, path, secret, **kw)
        ctype = r.headers.get("Content-Type", "")
        return r.status, jsoncodec.loads(raw) if "json" in ctype else raw


LIMITS = Limits(max_body_bytes=64 * 1024, max_batch_events=500, max_file_bytes=4096)


@pytest.fixture
async def srv(store: Store, tmp_path: Path) -> AsyncIterator[Srv]:
    data_dir = tmp_path / "data"
    app = make_app(store, data_dir=data_dir, limits=LIMITS)
    keys = app[KEYS_KEY]
    admin = (await keys.create(admin=True))[0]
    writer = (await keys.create(projects={P: "write"}))[0]
    reader = (await keys.create(projects={P: "read"}))[0]
    other = (await keys.create(projects={"other": "write"}))[0]
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies for an IP host
    session = aiohttp.ClientSession(cookie_jar=jar)
    try:
        yield Srv(
            str(server.make_url("")).rstrip("/"),
            session,
            admin,
            writer,
            reader,
            other,
            data_dir,
        )
    finally:
        await session.close()
        await server.close()


RUNS = f"/api/v1/projects/{P}/runs"


async def make_run(srv: Srv, run_id: str = "r1", **fields: Any) -> dict[str, Any]:
    status, body = await srv.req("POST", RUNS, json={"id": run_id, **fields})
    assert status == 200, body
    return dict(body)


# ------------------------------------------------------------------ ingest


async def test_health_needs_no_key(srv: Srv) -> None:
    assert await srv.req("GET", "/api/v1/health", key=None) == (200, {"ok": True})


async def test_create_resume_and_events(srv: Srv) -> None:
    r = await make_run(srv, name="one", config={"lr": 0.1}, tags=["a"])
    assert r["id"] == "r1"
    assert r["state"] == "running"
    assert r["config"] == {"lr": 0.1}
    r = await make_run(srv, config={"batch": 8})  # resume: config merges, name kept
    assert r["name"] == "one"
    assert r["config"] == {"lr": 0.1, "batch": 8}

    ev = f"{RUNS}/r1/events"
    batch = [row(i, i - 1, {"loss": float(i)}) for i in range(1, 11)]
    assert await srv.req("POST", ev, json={"events": batch}) == (200, {"last_seq": 10})
    assert await srv.req("POST", ev, json={"events": batch}) == (200, {"last_seq": 10})
    overlap = [row(i, i - 1, {"loss": float(i)}) for i in range(5, 16)]
    assert await srv.req("POST", ev, json={"events": overlap}) == (200, {"last_seq": 15})
    status, body = await srv.req("POST", ev, json={"events": [row(20, 19, {"loss": 1.0})]})
    assert status == 409
    assert body["error"]["code"] == "seq_gap"
    assert body["error"]["expected"] == 16
    assert await srv.req("GET", f"{RUNS}/r1/last_seq") == (200, {"last_seq": 15})

    # gzip body, with NaN travelling as a jsoncodec tag
    gz = gzip.compress(jsoncodec.dumps({"events": [row(16, 15, {"loss": math.nan})]}))
    status, body = await srv.req(
        "POST",
        ev,
        data=gz,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert (status, body) == (200, {"last_seq": 16})
    status, body = await srv.req("GET", f"{RUNS}/r1/history?keys=loss&buckets=1000")
    (s,) = body["series"]
    assert s["x"] == list(range(16))
    assert s["last"][:15] == [float(i) for i in range(1, 16)]
    assert math.isnan(s["last"][15])


async def test_events_to_unknown_run_is_404(srv: Srv) -> None:
    status, body = await srv.req("POST", f"{RUNS}/nope/events", json={"events": [row(1, 0, {})]})
    assert status == 404
    assert body["error"]["code"] == "run_not_found"


async def test_bad_events_are_400(srv: Srv) -> None:
    await make_run(srv)
    status, body = await srv.req("POST", f"{RUNS}/r1/events", json={"events": [["row", "1"]]})
    assert status == 400
    assert body["error"]["code"] == "bad_event"
    status, body = await srv.req("POST", f"{RUNS}/r1/events", data=b"{not json")
    assert status == 400
    assert body["error"]["code"] == "bad_json"


async def test_limits_are_413(srv: Srv) -> None:
    await make_run(srv)
    ev = f"{RUNS}/r1/events"
    many = [row(i, i, {"x": 1}) for i in range(1, 502)]
    status, body = await srv.req("POST", ev, json={"events": many})
    assert status == 413
    assert body["error"]["limit"] == "max_batch_events"
    big = {"events": [row(1, 0, {"s": "x" * 70_000})]}
    status, body = await srv.req("POST", ev, json=big)
    assert status == 413
    assert body["error"]["limit"] == "max_body_bytes"
    # a gzip body small on the wire but past the limit once decompressed
    bomb = gzip.compress(jsoncodec.dumps(big))
    assert len(bomb) < 64 * 1024
    status, body = await srv.req("POST", ev, data=bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    assert body["error"]["limit"] == "max_body_bytes"
    status, body = await srv.req("PUT", f"{RUNS}/r1/files/big.bin", data=b"x" * 5000)
    assert status == 413
    assert body["error"]["limit"] == "max_file_bytes"
    assert await srv.req("GET", f"{RUNS}/r1/last_seq") == (200, {"last_seq": 0})


# ------------------------------------------------------------------ query


async def test_runs_filter_sort_and_paging(srv: Srv) -> None:
    for i, lr in enumerate([0.001, 0.01, 0.1]):
        rid = f"r{i}"
        await make_run(srv, rid, config={"lr": lr})
        events = [["summary", 1, 1.0, {"values": {"loss": 1.0 - lr}}]]
        if i > 0:
            events.append(["finish", 2, 2.0, {"exit_code": 0}])
        status, _ = await srv.req("POST", f"{RUNS}/{rid}/events", json={"events": events})
        assert status == 200
    status, body = await srv.req(
        "GET", f"{RUNS}?filter=config.lr>=0.01&filter=state=finished&sort=-summary.loss"
    )
    assert status == 200
    assert body["total"] == 2
    assert [r["id"] for r in body["runs"]] == ["r1", "r2"]
    status, body = await srv.req("GET", f"{RUNS}?sort=config.lr&limit=1&offset=1")
    assert body["total"] == 3
    assert [r["id"] for r in body["runs"]] == ["r1"]
    status, body = await srv.req("GET", f"{RUNS}?filter=nonsense")
    assert status == 400
    assert body["error"]["code"] == "bad_filter"
    status, body = await srv.req("GET", f"{RUNS}?filter=bogus.x=1")
    assert status == 400
    status, body = await srv.req("GET", f"{RUNS}/r1")
    assert status == 200
    assert body["state"] == "finished"
    status, body = await srv.req("GET", f"{RUNS}/missing")
    assert status == 404
    status, body = await srv.req("GET", "/api/v1/projects")
    assert [p["name"] for p in body["projects"]] == [P]


async def test_history_downsampled_cursor_and_many_runs(srv: Srv) -> None:
    for rid in ("a", "b"):
        await make_run(srv, rid)
        events = [row(i + 1, i, {"loss": float(i), "acc": i / 100}) for i in range(100)]
        status, _ = await srv.req("POST", f"{RUNS}/{rid}/events", json={"events": events})
        assert status == 200
    status, body = await srv.req("GET", f"{RUNS}/a/history?keys=loss&buckets=10")
    (s,) = body["series"]
    assert s["downsampled"]
    assert len(s["x"]) == 10
    assert sum(s["count"]) == 100
    assert s["min"][0] == 0.0
    assert s["max"][-1] == 99.0
    assert s["cursor"] == 99
    status, body = await srv.req("GET", f"{RUNS}/a/history?keys=loss&after=97")
    (s,) = body["series"]
    assert s["x"] == [98, 99]
    assert not s["downsampled"]
    status, body = await srv.req("GET", f"{RUNS}/a/history?keys=loss&x_min=10&x_max=19&buckets=100")
    assert body["series"][0]["x"] == list(range(10, 20))
    status, body = await srv.req(
        "GET", f"/api/v1/projects/{P}/history?runs=a,b&keys=loss,acc&buckets=5"
    )
    assert status == 200
    assert sorted((s["run_id"], s["key"]) for s in body["series"]) == [
        ("a", "acc"),
        ("a", "loss"),
        ("b", "acc"),
        ("b", "loss"),
    ]
    status, body = await srv.req("GET", f"{RUNS}/a/history")
    assert status == 400
    assert "keys" in body["error"]["message"]
    status, body = await srv.req("GET", f"{RUNS}/a/history?keys=loss&buckets=0")
    assert status == 400


async def test_system_and_output_paging(srv: Srv) -> None:
    await make_run(srv)
    events: list[Any] = [
        ["stats", i + 1, 1000.0 + i, {"values": {"cpu": float(i)}}] for i in range(5)
    ]
    text = "".join(f"line {i}\n" for i in range(25))
    events.append(["output", 6, 2000.0, {"stream": "stdout", "text": text}])
    assert (await srv.req("POST", f"{RUNS}/r1/events", json={"events": events}))[0] == 200
    status, body = await srv.req("GET", f"{RUNS}/r1/system?keys=cpu")
    assert body["series"][0]["last"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    seen: list[str] = []
    after = 0
    while True:
        status, body = await srv.req("GET", f"{RUNS}/r1/output?after_line={after}&limit=10")
        assert status == 200
        if not body["lines"]:
            break
        seen += [x["text"] for x in body["lines"]]
        after = body["next"]
    assert seen == [f"line {i}" for i in range(25)]


async def test_files_upload_list_download(srv: Srv) -> None:
    await make_run(srv)
    status, body = await srv.req("PUT", f"{RUNS}/r1/files/media/images/a.png", data=b"PNG")
    assert status == 200
    assert body["size"] == 3
    sha = body["sha256"]
    ev = [["file", 1, 1.0, {"path": "media/images/a.png", "sha256": sha, "size": 3}]]
    assert (await srv.req("POST", f"{RUNS}/r1/events", json={"events": ev}))[0] == 200
    status, body = await srv.req("GET", f"{RUNS}/r1/files")
    assert body["files"] == [
        {"path": "media/images/a.png", "sha256": sha, "size": 3, "ts": 1.0, "stored": True}
    ]
    assert await srv.req("GET", f"{RUNS}/r1/files/media/images/a.png") == (200, b"PNG")
    # replace
    assert (await srv.req("PUT", f"{RUNS}/r1/files/media/images/a.png", data=b"PNG2"))[0] == 200
    assert await srv.req("GET", f"{RUNS}/r1/files/media/images/a.png") == (200, b"PNG2")
    status, body = await srv.req("GET", f"{RUNS}/r1/files/none.txt")
    assert status == 404
    assert body["error"]["code"] == "file_not_found"
    status, body = await srv.req("PUT", f"{RUNS}/ghost/files/x.txt", data=b"x")
    assert status == 404
    on_disk = srv.data_dir / "files" / P / "r1" / "media" / "images" / "a.png"
    assert on_disk.read_bytes() == b"PNG2"


TRAVERSAL = [
    "../x",
    "../../../../etc/passwd",
    "a/../../x",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "a%2Fb",
    "a%2fb",
    "%2e%2e/x",
    "a%2e%2e",
    "a\\b",
    "a%5Cb",
    "a%00b",
    "a//b",
    "a/",
    "./a",
    "x" * 300,
]


@pytest.mark.parametrize("path", TRAVERSAL)
async def test_path_traversal_refused(srv: Srv, path: str) -> None:
    await make_run(srv)
    status, body = await srv.req("PUT", f"{RUNS}/r1/files/{path}", data=b"evil")
    # 400 from our checks; 404 where the router never matched the files route
    assert status in (400, 404), (path, status, body)
    assert isinstance(body, dict)
    assert "error" in body
    status, _ = await srv.req("GET", f"{RUNS}/r1/files/{path}")
    assert status in (400, 404)
    written = [p for p in srv.data_dir.rglob("*") if p.is_file()]
    assert written == []


async def test_symlinks_in_storage_are_not_followed(srv: Srv, tmp_path: Path) -> None:
    await make_run(srv)
    assert (await srv.req("PUT", f"{RUNS}/r1/files/ok.txt", data=b"ok"))[0] == 200
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(b"secret")
    run_dir = srv.data_dir / "files" / P / "r1"
    (run_dir / "link").symlink_to(outside)  # a planted directory symlink
    (run_dir / "leak.txt").symlink_to(secret)  # a planted file symlink
    status, body = await srv.req("PUT", f"{RUNS}/r1/files/link/new.txt", data=b"x")
    assert status == 400
    assert body["error"]["code"] == "unsafe_path"
    assert not (outside / "new.txt").exists()
    status, body = await srv.req("GET", f"{RUNS}/r1/files/link/secret.txt")
    assert status == 400
    status, body = await srv.req("GET", f"{RUNS}/r1/files/leak.txt")
    assert status == 400
    # an upload over a symlinked file name must not write through it
    status, body = await srv.req("PUT", f"{RUNS}/r1/files/leak.txt", data=b"pwned")
    assert status == 400
    assert secret.read_bytes() == b"secret"


# ------------------------------------------------------------------ auth


async def test_auth_matrix(srv: Srv) -> None:
    await make_run(srv)
    ev = f"{RUNS}/r1/events"
    status, body = await srv.req("GET", RUNS, key=None)
    assert status == 401
    assert body["error"]["code"] == "unauthenticated"
    status, body = await srv.req(
        "GET", RUNS, key=None, headers={"Authorization": "Bearer not-a-key"}
    )
    assert status == 401
    assert body["error"]["code"] == "bad_key"
    status, body = await srv.req("GET", RUNS, key="other")
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    status, body = await srv.req("POST", ev, key="other", json={"events": []})
    assert status == 403
    status, body = await srv.req("GET", RUNS, key="reader")
    assert status == 200
    assert body["total"] == 1
    status, body = await srv.req("POST", ev, key="reader", json={"events": [row(1, 0, {})]})
    assert status == 403
    assert body["error"]["code"] == "read_only"
    status, body = await srv.req("PUT", f"{RUNS}/r1/files/a.txt", key="reader", data=b"x")
    assert status == 403
    status, body = await srv.req("POST", RUNS, key="reader", json={"id": "r2"})
    assert status == 403
    assert (await srv.req("POST", ev, key="writer", json={"events": [row(1, 0, {})]}))[0] == 200
    assert (await srv.req("GET", RUNS, key="admin"))[0] == 200
    # project listing is filtered by the key's rights
    await srv.req("POST", "/api/v1/projects/other/runs", key="other", json={"id": "o1"})
    status, body = await srv.req("GET", "/api/v1/projects", key="other")
    assert [p["name"] for p in body["projects"]] == ["other"]
    status, body = await srv.req("GET", "/api/v1/projects", key="admin")
    assert [p["name"] for p in body["projects"]] == ["other", P]


async def test_login_sets_cookie_then_cookie_works(srv: Srv) -> None:
    status, body = await srv.req("GET", "/login?token=wrong", key=None)
    assert status == 401
    async with srv.session.get(srv.url(f"/login?token={srv.reader}"), allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    status, body = await srv.req("GET", "/api/v1/whoami", key=None)
    assert status == 200
    assert body["projects"] == {P: "read"}
    assert (await srv.req("GET", RUNS, key=None))[0] == 200


async def test_unknown_route_is_json_404(srv: Srv) -> None:
    status, body = await srv.req("GET", "/api/v1/nothing")
    assert status == 404
    assert "error" in body
