"""API keys in the store: hashing, rights, revocation across processes, first start,
the legacy keys file, the /api/v1/keys endpoints and ``runbus server keys``.

Every store-level test runs on SQLite and PostgreSQL (tests/server/conftest.py).
Two stores opened on one database stand for two server processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from apiclient import request

from server.app import KEYS_KEY, make_app
from server.auth import (
    CACHE_TTL,
    KeyFileError,
    KeyInputError,
    KeyNotFoundError,
    Keys,
    LastAdminKeyError,
)
from server.main import main as server_main
from server.store import Store
from server.store.keys import key_table

pytestmark = pytest.mark.anyio
StoreFactory = Callable[..., Awaitable[Store]]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()


# ------------------------------------------------------------------ store level


async def test_only_the_hash_is_stored(store: Store) -> None:
    keys = Keys(store)
    key, info = await keys.create(name="ci", projects={"mnist": "write"})
    rows = await key_table(store).all()
    assert [r.id for r in rows] == [info.id]
    assert rows[0].hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(rows)
    assert key not in repr(await keys.list_keys())


async def test_rights_of_a_key(store: Store) -> None:
    keys = Keys(store)
    reader = (await keys.create(projects={"mnist": "read", "cifar": "write"}))[0]
    p = await keys.lookup(reader)
    assert p is not None
    assert p.can("mnist", "read")
    assert not p.can("mnist", "write")
    assert p.can("cifar", "write")
    assert not p.can("other", "read")
    admin = await keys.lookup((await keys.create(admin=True))[0])
    assert admin is not None
    assert admin.can("anything", "write")
    assert await keys.lookup("not-a-key") is None


async def test_a_key_created_on_one_process_works_on_another_at_once(
    store_factory: StoreFactory,
) -> None:
    a, b = Keys(await store_factory()), Keys(await store_factory())
    assert await b.lookup("not-yet") is None
    key = (await a.create(projects={"p": "read"}))[0]
    assert await b.lookup(key) is not None  # unknown keys are never cached


async def test_revoked_key_stops_at_once_here_and_within_the_ttl_elsewhere(
    store_factory: StoreFactory,
) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = Keys(await store_factory(), clock=clock_a)
    b = Keys(await store_factory(), clock=clock_b)
    admin = (await a.create(admin=True))[0]
    key, info = await a.create(projects={"p": "write"})
    assert await a.lookup(key) is not None
    assert await b.lookup(key) is not None  # now cached on b
    revoked = await a.revoke(info.id)
    assert revoked.revoked is not None
    assert await a.lookup(key) is None  # the revoking process drops its cache entry
    clock_b.now += CACHE_TTL + 0.01
    assert await b.lookup(key) is None
    assert await b.lookup(admin) is not None
    listed = {k.id: k for k in await b.list_keys()}
    assert listed[info.id].revoked == revoked.revoked


async def test_revoke_errors(store: Store) -> None:
    keys = Keys(store)
    _, first = await keys.create(admin=True)
    with pytest.raises(KeyNotFoundError, match="nope"):
        await keys.revoke("nope")
    with pytest.raises(LastAdminKeyError, match="last active admin key"):
        await keys.revoke(first.id)
    _, second = await keys.create(admin=True)
    done = await keys.revoke(first.id)
    assert done.revoked is not None
    again = await keys.revoke(first.id)  # revoking twice keeps the first time
    assert again.revoked == done.revoked
    with pytest.raises(LastAdminKeyError):
        await keys.revoke(second.id)


async def test_bad_key_requests_are_refused_naming_the_culprit(store: Store) -> None:
    keys = Keys(store)
    with pytest.raises(KeyInputError, match=r"'mnist'.*'admin'"):
        await keys.create(projects={"mnist": "admin"})
    with pytest.raises(KeyInputError, match="at least one project"):
        await keys.create(name="nothing")
    with pytest.raises(KeyInputError, match="project name"):
        await keys.create(projects={"": "read"})
    with pytest.raises(KeyInputError, match="name must be"):
        await keys.create(name="x" * 500, admin=True)
    assert await keys.list_keys() == []


async def test_last_used_is_recorded(store: Store) -> None:
    keys = Keys(store)
    key, info = await keys.create(projects={"p": "read"})
    assert info.last_used is None
    await keys.lookup(key)
    (listed,) = await keys.list_keys()
    assert listed.last_used is not None


async def test_one_admin_key_however_many_processes_start_at_once(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    starters = [Keys(await store_factory()) for _ in range(4)]
    boots = await asyncio.gather(*(k.bootstrap(tmp_path) for k in starters))
    created = [b.admin_key for b in boots if b.admin_key is not None]
    assert len(created) == 1
    assert len(await starters[0].list_keys()) == 1
    p = await starters[3].lookup(created[0])
    assert p is not None
    assert p.admin
    assert (await starters[0].bootstrap(tmp_path)).admin_key is None  # a restart creates none


async def test_legacy_keys_file_is_imported_once(store: Store, tmp_path: Path) -> None:
    old_admin, old_reader = "legacy-admin-key", "legacy-reader-key"
    legacy = tmp_path / "keys.json"
    legacy.write_bytes(
        orjson.dumps(
            {
                "version": 1,
                "keys": [
                    {
                        "id": "a1",
                        "name": "first admin",
                        "hash": hashlib.sha256(old_admin.encode()).hexdigest(),
                        "admin": True,
                        "projects": {},
                        "created": 1.0,
                    },
                    {
                        "id": "r1",
                        "name": "",
                        "hash": hashlib.sha256(old_reader.encode()).hexdigest(),
                        "admin": False,
                        "projects": {"mnist": "read"},
                        "created": 2.0,
                    },
                ],
            }
        )
    )
    keys = Keys(store)
    boot = await keys.bootstrap(tmp_path)
    assert boot.imported == 2
    assert boot.admin_key is None  # there were keys: no new admin
    assert boot.legacy_renamed == tmp_path / "keys.json.imported"
    assert not legacy.exists()
    reader = await keys.lookup(old_reader)
    assert reader is not None
    assert reader.projects == {"mnist": "read"}
    admin = await keys.lookup(old_admin)
    assert admin is not None
    assert admin.admin
    again = await keys.bootstrap(tmp_path)
    assert (again.imported, again.admin_key) == (0, None)
    assert [k.id for k in await keys.list_keys()] == ["a1", "r1"]


async def test_malformed_legacy_file_is_named(store: Store, tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text('{"keys": [{"id": "x"}]}')
    with pytest.raises(KeyFileError, match=r"keys\.json is malformed"):
        await Keys(store).bootstrap(tmp_path)
    assert await Keys(store).list_keys() == []


# ------------------------------------------------------------------ HTTP


class Client:
    """A server over ``store`` with an admin key and a project reader key."""

    def __init__(self, base: str, session: aiohttp.ClientSession, admin: str, reader: str):
        self.base, self.session, self.admin, self.reader = base, session, admin, reader

    async def req(
        self, method: str, path: str, key: str | None, **kw: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        r, raw = await request(
            self.session, self.base, method, path, key, allow_redirects=False, **kw
        )
        is_json = "json" in r.headers.get("Content-Type", "")
        return r.status, orjson.loads(raw) if is_json else raw, r


@pytest.fixture
async def client(store: Store, tmp_path: Path) -> AsyncIterator[Client]:
    app = make_app(store, data_dir=tmp_path / "data")
    admin = (await app[KEYS_KEY].create(admin=True, name="root"))[0]
    reader = (await app[KEYS_KEY].create(projects={"p": "read"}))[0]
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        yield Client(str(server.make_url("")).rstrip("/"), session, admin, reader)
    finally:
        await session.close()
        await server.close()


async def test_key_endpoints(client: Client) -> None:
    status, body, _ = await client.req(
        "POST", "/api/v1/keys", client.admin, json={"name": "ci", "projects": {"p": "write"}}
    )
    assert status == 201
    new_key, new_id = body["key"], body["id"]
    assert body["projects"] == {"p": "write"}
    status, _, _ = await client.req("POST", "/api/v1/projects/p/runs", new_key, json={"id": "r1"})
    assert status == 200
    status, body, _ = await client.req("GET", "/api/v1/keys", client.admin)
    assert status == 200
    assert {k["name"] for k in body["keys"]} == {"root", "", "ci"}
    for k in body["keys"]:
        assert set(k) == {"id", "name", "admin", "projects", "created", "revoked", "last_used"}
    assert new_key not in orjson.dumps(body).decode()
    status, body, _ = await client.req("DELETE", f"/api/v1/keys/{new_id}", client.admin)
    assert status == 200
    assert body["revoked"] is not None
    status, body, _ = await client.req("GET", "/api/v1/projects/p/runs", new_key)
    assert status == 401
    assert "revoked" in body["error"]["message"]
    status, _, _ = await client.req("GET", f"/login?token={new_key}", None)
    assert status == 401


async def test_key_endpoint_errors(client: Client) -> None:
    for method, path in (("GET", "/api/v1/keys"), ("DELETE", "/api/v1/keys/x")):
        status, body, _ = await client.req(method, path, client.reader)
        assert status == 403
        assert body["error"]["code"] == "admin_only"
    status, body, _ = await client.req(
        "POST", "/api/v1/keys", client.reader, json={"projects": {"p": "write"}}
    )
    assert status == 403  # a reader cannot mint itself a writer
    status, body, _ = await client.req("GET", "/api/v1/keys", None)
    assert status == 401
    status, body, _ = await client.req(
        "POST", "/api/v1/keys", client.admin, json={"projects": {"p": "owner"}}
    )
    assert status == 400
    assert "'owner'" in body["error"]["message"]
    status, body, _ = await client.req(
        "POST", "/api/v1/keys", client.admin, json={"project": {"p": "read"}}
    )
    assert status == 400
    assert "project" in body["error"]["message"]
    status, body, _ = await client.req(
        "POST", "/api/v1/keys", client.admin, json={"projects": {"p": "read"}, "admin": "yes"}
    )
    assert status == 400
    status, body, _ = await client.req("DELETE", "/api/v1/keys/nope", client.admin)
    assert status == 404
    assert body["error"]["code"] == "key_not_found"
    status, body, _ = await client.req("GET", "/api/v1/keys", client.admin)
    (root,) = [k for k in body["keys"] if k["admin"]]
    status, body, _ = await client.req("DELETE", f"/api/v1/keys/{root['id']}", client.admin)
    assert status == 409
    assert body["error"]["code"] == "last_admin_key"


async def test_login_cookie_is_secure_behind_an_https_proxy(client: Client) -> None:
    status, _, r = await client.req("GET", f"/login?token={client.reader}", None)
    assert status == 302
    assert "Secure" not in r.headers["Set-Cookie"]
    status, _, r = await client.req(
        "GET",
        f"/login?token={client.reader}",
        None,
        headers={"X-Forwarded-Proto": "https"},
    )
    assert status == 302
    assert "Secure" in r.headers["Set-Cookie"]


# ------------------------------------------------------------------ CLI


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = server_main(["keys", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(tmp_path)]
    code, out, err = _cli(capsys, "create", "--name", "ops", "--admin", *data)
    assert code == 0, err
    admin_key = out.strip()
    code, out, err = _cli(
        capsys, "create", "--name", "ci", "-p", "mnist=write", "-p", "cifar=read", *data
    )
    assert code == 0, err
    ci_key = out.strip()
    assert len(ci_key) >= 43
    code, out, _ = _cli(capsys, "list", "--json", *data)
    listed = [orjson.loads(line) for line in out.splitlines()]
    assert [(k["name"], k["admin"], k["projects"]) for k in listed] == [
        ("ops", True, {}),
        ("ci", False, {"mnist": "write", "cifar": "read"}),
    ]
    assert admin_key not in out
    assert ci_key not in out
    code, out, _ = _cli(capsys, "list", *data)
    assert "mnist=write, cifar=read" in out
    assert "active" in out
    ci_id = listed[1]["id"]
    code, out, err = _cli(capsys, "revoke", ci_id, *data)
    assert code == 0, err
    assert ci_id in out
    code, out, _ = _cli(capsys, "list", "--json", *data)
    assert orjson.loads(out.splitlines()[1])["revoked"] is not None


def test_keys_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(tmp_path)]
    code, _, err = _cli(capsys, "create", "-p", "mnist=owner", *data)
    assert code == 1
    assert "'owner'" in err
    code, _, err = _cli(capsys, "revoke", "nope", *data)
    assert code == 1
    assert "'nope'" in err
    with pytest.raises(SystemExit) as exc:
        server_main(["keys", "create", "-p", "mnist", *data])
    assert exc.value.code == 2
    assert "PROJECT=RIGHT" in capsys.readouterr().err


@pytest.mark.anyio
async def test_a_refused_database_is_one_line_naming_it(
    pg_connect: Callable[[], Awaitable[tuple[Any, str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    conn, dsn = await pg_connect()  # the server is up: only the database name is wrong
    await conn.close()
    # A password in the URL (trust auth ignores it) must not reach the message.
    parts = urllib.parse.urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    url = f"{parts.scheme}://{parts.username}:s3cret-pw@{host}/runbus_no_such_database"
    code = await asyncio.to_thread(server_main, ["keys", "list", "--db", url])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert '"runbus_no_such_database" does not exist' in err
    assert "check the --db URL" in err
    assert "s3cret-pw" not in err
    assert f"{parts.username}:***@" in err
