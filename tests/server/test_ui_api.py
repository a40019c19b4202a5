"""What the web UI needs from the server, over both stores: the keys and values
endpoints, who-am-I, the UI's own files and login form, and run files typed for
the browser. The pages themselves are exercised in a browser by tests/ui/.
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

from pipeline import jsoncodec
from server import ui, ui_vendor
from server.app import KEYS_KEY, file_content_type, make_app
from server.store import Store

pytestmark = pytest.mark.anyio
StoreFactory = Callable[..., Awaitable[Store]]
P = "proj"
RUNS = f"/api/v1/projects/{P}/runs"


@dataclass
class Client:
    """A server on loopback and a cookie-less session that sends a key per request."""

    base: str
    session: aiohttp.ClientSession
    admin: str
    reader: str
    other: str

    async def req(
        self, method: str, path: str, key: str | None = "admin", raw: bool = False, **kw: Any
    ) -> tuple[int, Any, Any]:
        """(status, body, headers); the body is decoded JSON unless ``raw`` or compressed."""
        secret = None if key is None else getattr(self, key)
        r, data = await request(self.session, self.base, method, path, secret, **kw)
        decode = r.headers.get("Content-Type", "").startswith("application/json")
        if raw or "Content-Encoding" in r.headers or not decode:
            return r.status, data, r.headers
        return r.status, jsoncodec.loads(data), r.headers


@pytest.fixture
async def client(store_factory: StoreFactory, tmp_path: Path) -> AsyncIterator[Client]:
    store = await store_factory()
    app = make_app(store, data_dir=tmp_path / "data")
    keys = app[KEYS_KEY]
    admin = (await keys.create(admin=True))[0]
    reader = (await keys.create(projects={P: "read"}))[0]
    other = (await keys.create(projects={"other": "read"}))[0]
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    # auto_decompress off: the tests see what travels over the wire.
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
    try:
        yield Client(str(server.make_url("")).rstrip("/"), session, admin, reader, other)
    finally:
        await session.close()
        await server.close()


def image(step: int) -> dict[str, Any]:
    return {"_type": "image", "path": f"media/image/img_{step}.png", "sha256": "0", "size": 3}


async def seed(c: Client, run_id: str = "r1", steps: int = 10) -> None:
    status, body, _ = await c.req("POST", RUNS, json={"id": run_id})
    assert status == 200, body
    events = []
    for i in range(steps):
        data: dict[str, Any] = {"train/loss": 1.0 / (i + 1), "caption": f"c{i}"}
        if i % 3 == 0:
            data["img"] = image(i)
        events.append(row(i + 1, i, data))
    events.append(["stats", steps + 1, 2000.0, {"runtime": 1.0, "values": {"system/cpu": 5.0}}])
    status, body, _ = await c.req("POST", f"{RUNS}/{run_id}/events", json={"events": events})
    assert status == 200, body


# ------------------------------------------------------------------ keys and values


async def test_keys_lists_history_values_and_system(client: Client) -> None:
    await seed(client)
    status, body, _ = await client.req("GET", f"{RUNS}/r1/keys", key="reader")
    assert status == 200
    assert body == {
        "history": ["train/loss"],
        "values": ["caption", "img"],
        "system": ["system/cpu"],
    }
    status, body, _ = await client.req("GET", f"{RUNS}/nope/keys")
    assert status == 404
    assert body["error"]["code"] == "run_not_found"
    status, body, _ = await client.req("GET", f"{RUNS}/r1/keys", key="other")
    assert status == 403


async def test_values_page_with_a_step_cursor(client: Client) -> None:
    await seed(client)
    status, body, _ = await client.req("GET", f"{RUNS}/r1/values?keys=img")
    assert status == 200
    assert body["values"] == [{"key": "img", "step": s, "value": image(s)} for s in (0, 3, 6, 9)]
    assert body["next"] == 9

    seen: list[tuple[str, int]] = []
    cursor: int | None = None
    while True:
        q = "keys=img,caption&limit=3" + (f"&after_step={cursor}" if cursor is not None else "")
        status, body, _ = await client.req("GET", f"{RUNS}/r1/values?{q}", key="reader")
        assert status == 200
        if not body["values"]:
            assert body["next"] is None
            break
        assert len(body["values"]) <= 3
        seen += [(v["key"], v["step"]) for v in body["values"]]
        cursor = body["next"]
    want = [("caption", i) for i in range(10)] + [("img", i) for i in (0, 3, 6, 9)]
    assert sorted(seen, key=lambda kv: (kv[1], kv[0])) == sorted(
        want, key=lambda kv: (kv[1], kv[0])
    )
    assert len(seen) == len(set(seen))


async def test_values_keep_non_finite_numbers_and_check_params(client: Client) -> None:
    await client.req("POST", RUNS, json={"id": "r1"})
    hist = {"_type": "histogram", "bins": [0.0, 1.0, math.inf], "counts": [3, 1], "dropped": 2}
    await client.req("POST", f"{RUNS}/r1/events", json={"events": [row(1, 0, {"h": hist})]})
    status, body, _ = await client.req("GET", f"{RUNS}/r1/values?keys=h")
    assert status == 200
    assert body["values"][0]["value"]["bins"] == [0.0, 1.0, math.inf]
    for query, name in (
        ("", "keys"),
        ("keys=h&limit=0", "limit"),
        ("keys=h&after_step=x", "after_step"),
    ):
        status, body, _ = await client.req("GET", f"{RUNS}/r1/values?{query}")
        assert status == 400, query
        assert name in body["error"]["message"]


async def test_large_json_is_gzipped_for_clients_that_accept_it(client: Client) -> None:
    await client.req("POST", RUNS, json={"id": "r1"})
    events = [row(i + 1, i, {"loss": i / 7}) for i in range(2000)]
    await client.req("POST", f"{RUNS}/r1/events", json={"events": events})
    path = f"{RUNS}/r1/history?keys=loss&buckets=5000"
    status, raw, headers = await client.req("GET", path, headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    plain = gzip.decompress(raw)
    assert len(raw) * 3 < len(plain)  # raw series repeat their values: it compresses well
    assert jsoncodec.loads(plain)["series"][0]["x"] == list(range(2000))
    status, raw, headers = await client.req(
        "GET", path, raw=True, headers={"Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in headers
    assert raw == plain


# ------------------------------------------------------------------ who am I, login


async def test_whoami_names_the_key_and_its_rights(client: Client) -> None:
    status, body, _ = await client.req("GET", "/api/v1/whoami", key="reader")
    assert status == 200
    assert body["admin"] is False
    assert body["projects"] == {P: "read"}
    status, body, _ = await client.req("GET", "/api/v1/whoami", key=None)
    assert status == 401


async def test_login_form_post_sets_the_cookie(client: Client) -> None:
    async with client.session.post(
        client.base + "/login", data={"token": client.reader}, allow_redirects=False
    ) as r:
        assert r.status == 303
        assert r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"runbus_key={client.reader};")
    assert "HttpOnly" in cookie
    async with client.session.post(
        client.base + "/login", data={"token": "wrong"}, allow_redirects=False
    ) as r:
        assert r.status == 401
        assert "Set-Cookie" not in r.headers


# ------------------------------------------------------------------ the UI's files


@pytest.fixture
def vendor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty vendor folder in place of the built one."""
    folder = tmp_path / "vendor"
    folder.mkdir()
    monkeypatch.setattr(ui, "VENDOR_DIR", folder)
    return folder


async def test_index_needs_no_key_and_says_how_to_build_missing_assets(
    client: Client, vendor: Path
) -> None:
    status, body, headers = await client.req("GET", "/", key=None)
    assert status == 503
    assert headers["Content-Type"].startswith("text/html")
    assert b"make ui" in body
    assert b"uPlot.iife.min.js" in body
    # The API is unaffected.
    assert (await client.req("GET", "/api/v1/projects"))[0] == 200

    for name in ui.VENDOR_FILES:
        (vendor / name).write_text("/* stand-in */")
    status, body, headers = await client.req("GET", "/", key=None)
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b'<script type="module" src="/ui/js/main.js">' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, body, headers = await client.req("GET", "/ui/vendor/uPlot.iife.min.js", key=None)
    assert (status, body) == (200, b"/* stand-in */")


async def test_ui_scripts_are_served_as_javascript_and_nothing_else_is(client: Client) -> None:
    status, body, headers = await client.req("GET", "/ui/js/main.js", key=None)
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert b"parseRoute" in body
    status, _, headers = await client.req("GET", "/ui/app.css", key=None)
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/css")
    for bad in ("/ui/js/nope.js", "/ui/../app.py", "/ui/js/../../ui.py", "/ui/%2e%2e/ui.py"):
        status, body, _ = await client.req("GET", bad, key=None)
        assert status in (401, 404), bad  # outside /ui/ a key is needed; inside, no such file
        assert b"import" not in body
    (ui.UI_DIR / "js" / ".hidden.js").write_text("secret")
    try:
        assert (await client.req("GET", "/ui/js/.hidden.js", key=None))[0] == 404
    finally:
        (ui.UI_DIR / "js" / ".hidden.js").unlink()


# ------------------------------------------------------------------ run files


async def test_files_are_typed_for_the_browser_and_downloads_are_asked_for(
    client: Client,
) -> None:
    await client.req("POST", RUNS, json={"id": "r1"})
    png = b"\x89PNG\r\n\x1a\n"
    files = {
        "media/image/a.png": (png, "image/png"),
        "media/audio/b.wav": (b"RIFF", "audio/wav"),
        "media/video/c.mp4": (b"\0\0\0\x18ftyp", "video/mp4"),
        "media/table/d.table.json": (b'{"columns": []}', "application/json; charset=utf-8"),
        "output.log": (b"hello\n", "text/plain; charset=utf-8"),
        "diff.patch": (b"+x\n", "text/plain; charset=utf-8"),
        "evil.js": (b"alert(1)", "text/plain; charset=utf-8"),
        "media/html/e.html": (b"<script>alert(1)</script>", "text/html; charset=utf-8"),
        "model.bin": (b"\0\1", "application/octet-stream"),
    }
    for path, (data, _) in files.items():
        status, body, _ = await client.req("PUT", f"{RUNS}/r1/files/{path}", data=data)
        assert status == 200, body
    for path, (data, ctype) in files.items():
        status, body, headers = await client.req(
            "GET", f"{RUNS}/r1/files/{path}", key="reader", raw=True
        )
        assert (status, body) == (200, data)
        assert headers["Content-Type"] == ctype, path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Security-Policy"] == "sandbox"
        assert "Content-Disposition" not in headers
        # Media names carry a content hash: cached for good; other files revalidate.
        immutable = "immutable" in headers["Cache-Control"]
        assert immutable == path.startswith("media/"), path
    status, _, headers = await client.req("GET", f"{RUNS}/r1/files/media/image/a.png?download=1")
    assert status == 200
    assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''a.png"


def test_content_type_guess() -> None:
    assert file_content_type("a.GIF") == "image/gif"
    assert file_content_type("requirements.txt") == "text/plain; charset=utf-8"
    assert file_content_type("x.svg") == "image/svg+xml"
    assert file_content_type("noext") == "application/octet-stream"
    assert file_content_type("page.xhtml") == "text/plain; charset=utf-8"


# ------------------------------------------------------------------ vendoring


def test_vendor_copies_every_file_the_page_loads(tmp_path: Path) -> None:
    assert set(ui_vendor.SOURCES) == set(ui.VENDOR_FILES)
    web = tmp_path / "web"
    modules = web / "node_modules"
    for name, src in ui_vendor.SOURCES.items():
        (modules / src).parent.mkdir(parents=True, exist_ok=True)
        (modules / src).write_text(f"// {name}")
    (modules / "uplot" / "LICENSE").write_text("MIT")
    dest = tmp_path / "vendor"
    ui_vendor.copy_assets(web, dest)
    assert ui.missing_vendor_files(dest) == []
    assert (dest / "vega.min.js").read_text() == "// vega.min.js"
    assert (dest / "uplot.LICENSE.txt").read_text() == "MIT"
    assert not list(dest.glob(".*"))  # no temporary files left


def test_vendor_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ui_vendor.VendorError, match=r"vega/build/vega\.min\.js"):
        ui_vendor.copy_assets(tmp_path / "web", tmp_path / "vendor")
    with pytest.raises(ui_vendor.VendorError, match=r"package-lock\.json"):
        ui_vendor.npm_ci(tmp_path / "web")


async def test_a_large_answer_is_gzipped_whole(client: Client) -> None:
    # Answers past a few hundred KB are compressed off the event loop: the same bytes must come out.
    await client.req("POST", RUNS, json={"id": "r1"})
    events = [row(i + 1, i, {"loss": i / 7, "acc": i / 11}) for i in range(20_000)]
    for start in (0, 10_000):  # a batch holds at most 10,000 events
        status, _, _ = await client.req(
            "POST", f"{RUNS}/r1/events", json={"events": events[start : start + 10_000]}
        )
        assert status == 200
    path = f"{RUNS}/r1/history?keys=loss,acc&after=-1"
    status, raw, headers = await client.req("GET", path, headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    plain = gzip.decompress(raw)
    assert len(plain) > 256 * 1024
    series = {s["key"]: s for s in jsoncodec.loads(plain)["series"]}
    assert series["loss"]["x"] == list(range(20_000))
    assert series["acc"]["last"][-1] == 19_999 / 11
