"""``runbus server`` as deployed: real processes, signals, and two processes over one
PostgreSQL database sharing a data directory (docs/deploy.md).

PostgreSQL comes from the ``pg_connect`` fixture (tests/conftest.py): skipped when
unreachable, a failure when ``RUNBUS_TEST_POSTGRES=1``. Each test gets a fresh
schema, passed to the servers as ``?search_path=`` in the ``--db`` URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest

from pipeline import jsoncodec
from server.auth import CACHE_TTL
from server.store import open_store

pytestmark = pytest.mark.anyio
PgConnect = Callable[[], Awaitable[tuple[Any, str]]]
P = "proj"
RUNS = f"/api/v1/projects/{P}/runs"
START_DEADLINE = 30.0  # a cold interpreter on a busy machine; normally well under 1 s


@dataclass
class Server:
    """One ``runbus server`` child process."""

    proc: asyncio.subprocess.Process
    stderr: Path
    url: str = ""
    admin_key: str | None = None
    lines: list[str] = field(default_factory=list)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, list[str]]:
        """Signal the process; its exit status and the lines it printed afterwards."""
        self.proc.send_signal(sig)
        return await self.exit()

    async def exit(self) -> tuple[int, list[str]]:
        """Wait for the process to end; its exit status and its last lines."""
        assert self.proc.stdout is not None
        with anyio.fail_after(START_DEADLINE):
            rest = (await self.proc.stdout.read()).decode().splitlines()
            code = await self.proc.wait()
        return code, rest


async def start_server(tmp: Path, data: Path, *args: str) -> Server:
    """Start ``runbus server`` on a free port; return once it prints ``listening on``."""
    err = tmp / f"stderr-{uuid.uuid4().hex[:6]}.txt"
    with err.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline.cli",
            "server",
            "--port",
            "0",
            "--data",
            str(data),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=err_file,
            env=dict(os.environ),
        )
    srv = Server(proc, err)
    assert proc.stdout is not None
    with anyio.fail_after(START_DEADLINE):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"server exited before listening: {err.read_text()}")
            srv.lines.append(line.rstrip("\n"))
            if found := re.search(r"login: \S+/login\?token=(\S+)", line):
                srv.admin_key = found.group(1)
            if found := re.match(r"runbus server listening on (\S+)", line):
                srv.url = found.group(1)
                return srv


async def until(check: Callable[[], Awaitable[bool]], timeout: float = START_DEADLINE) -> None:
    """Poll ``check`` until it is true, failing after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        # The state lives in another process: there is no event to wait on.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def uploading(run_dir: Path) -> bool:
    """Whether a handler is writing an upload into ``run_dir`` (its temp file exists)."""
    return bool([p async for p in anyio.Path(run_dir).glob(".upload-*.tmp")])


async def kill(servers: list[Server]) -> None:
    for s in servers:
        if s.proc.returncode is None:
            s.proc.kill()
            await s.proc.wait()


class Api:
    """Requests to one server with one key."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self.session, self.url, self.key = session, url, key

    async def __call__(
        self, method: str, path: str, *, key: str | None = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        if "json" in kw:
            kw["data"] = jsoncodec.dumps(kw.pop("json"))
            headers["Content-Type"] = "application/json"
        async with self.session.request(method, self.url + path, headers=headers, **kw) as r:
            raw = await r.read()
            is_json = "json" in r.headers.get("Content-Type", "")
            return r.status, jsoncodec.loads(raw) if is_json else raw


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def event(seq: int) -> list[Any]:
    """Event ``seq`` of a run: odd seqs are history rows, even ones console lines.

    Console lines are numbered as they are stored, so a duplicate stored event
    shows up as an extra line.
    """
    if seq % 2:
        step = seq // 2
        return ["row", seq, 1000.0 + step, {"step": step, "runtime": 1.0, "data": {"x": seq}}]
    return ["output", seq, 1000.0, {"stream": "stdout", "text": f"line {seq}\n"}]


# ------------------------------------------------------------------ one process, SQLite


async def test_sigterm_lets_a_request_in_flight_finish(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    data = tmp_path / "data"
    srv = await start_server(tmp_path, data)
    try:
        assert srv.admin_key is not None
        api = Api(session, srv.url, srv.admin_key)
        assert (await api("POST", RUNS, json={"id": "r1"}))[0] == 200
        events = [event(s) for s in range(1, 41)]
        assert (await api("POST", f"{RUNS}/r1/events", json={"events": events}))[0] == 200

        gate = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"a" * 1000
            await gate.wait()
            yield b"b" * 1000

        upload = asyncio.create_task(api("PUT", f"{RUNS}/r1/files/big.bin", data=body()))
        run_dir = data / "files" / P / "r1"
        await until(lambda: uploading(run_dir))
        srv.proc.send_signal(signal.SIGTERM)
        # The listening socket closes first: new connections are refused...
        fresh = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=fresh) as probe:

            async def refused() -> bool:
                try:
                    async with probe.get(srv.url + "/api/v1/health"):
                        return False
                except aiohttp.ClientConnectionError:
                    return True

            await until(refused)
        # ...while the request in flight still completes.
        gate.set()
        status, result = await upload
        assert status == 200, result
        assert result["size"] == 2000
        code, rest = await srv.exit()
    finally:
        await kill([srv])
    assert code == 0, srv.stderr.read_text()
    assert len(rest) == 1
    assert "stopped on SIGTERM" in rest[0]
    assert "requests in flight finished" in rest[0]
    assert (run_dir / "big.bin").read_bytes() == b"a" * 1000 + b"b" * 1000
    db = data / "runbus.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = await open_store(db)
    try:
        assert await store.last_seq(P, "r1") == 40
        lines = await store.output(P, "r1")
        assert [x.text for x in lines] == [f"line {s}" for s in range(2, 41, 2)]
    finally:
        await store.aclose()


async def test_shutdown_is_bounded(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    data = tmp_path / "data"
    srv = await start_server(tmp_path, data, "--shutdown-timeout", "0.2")
    never = asyncio.Event()
    upload = None
    try:
        assert srv.admin_key is not None
        api = Api(session, srv.url, srv.admin_key)
        assert (await api("POST", RUNS, json={"id": "r1"}))[0] == 200

        async def body() -> AsyncIterator[bytes]:
            yield b"a" * 1000
            await never.wait()
            yield b"b"

        upload = asyncio.create_task(api("PUT", f"{RUNS}/r1/files/stuck.bin", data=body()))
        run_dir = data / "files" / P / "r1"
        await until(lambda: uploading(run_dir))
        code, rest = await srv.stop(signal.SIGINT)
    finally:
        await kill([srv])
        if upload is not None:
            upload.cancel()
    assert code == 0, srv.stderr.read_text()
    assert "stopped on SIGINT: 1 request(s) cut off after 0.2 s" in rest[0]
    assert not (run_dir / "stuck.bin").exists()


async def test_upgrade_from_a_keys_file(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    data = tmp_path / "data"
    data.mkdir()
    old_key = "key-from-an-older-server"
    entry = {
        "id": "k1",
        "name": "first admin",
        "hash": hashlib.sha256(old_key.encode()).hexdigest(),
        "admin": True,
        "projects": {},
        "created": 1.0,
    }
    (data / "keys.json").write_bytes(orjson.dumps({"version": 1, "keys": [entry]}))
    srv = await start_server(tmp_path, data)
    try:
        assert srv.admin_key is None  # the imported admin key is kept; no new one
        assert any("Imported 1 API key(s)" in line for line in srv.lines), srv.lines
        assert (await Api(session, srv.url, old_key)("GET", RUNS))[0] == 200
        code, _ = await srv.stop()
    finally:
        await kill([srv])
    assert code == 0
    assert not (data / "keys.json").exists()
    assert (data / "keys.json.imported").exists()


# ------------------------------------------------------------------ two processes, PostgreSQL


@dataclass
class Pair:
    a: Server
    b: Server
    admin_key: str
    data: Path


@pytest.fixture
async def pg_url(pg_connect: PgConnect) -> AsyncIterator[str]:
    """A ``--db`` URL whose search_path is a fresh schema, dropped afterwards."""
    conn, dsn = await pg_connect()
    schema = f"runbus_deploy_{uuid.uuid4().hex[:12]}"
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield dsn + ("&" if "?" in dsn else "?") + f"search_path={schema}"
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def pair(tmp_path: Path, pg_url: str) -> AsyncIterator[Pair]:
    """Two servers started at the same moment on one fresh database and data directory."""
    data = tmp_path / "shared-data"
    started: list[Server] = []

    async def one() -> None:
        started.append(await start_server(tmp_path, data, "--db", pg_url))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
        keys = [s.admin_key for s in started if s.admin_key]
        assert len(keys) == 1, [s.lines for s in started]  # one admin key, however many start
        yield Pair(started[0], started[1], keys[0], data)
    finally:
        await kill(started)


async def test_data_written_through_one_process_reads_through_the_other(
    pair: Pair, session: aiohttp.ClientSession
) -> None:
    a = Api(session, pair.a.url, pair.admin_key)
    b = Api(session, pair.b.url, pair.admin_key)
    assert (await a("POST", RUNS, json={"id": "r1", "config": {"lr": 0.1}}))[0] == 200
    for start in range(1, 61, 20):
        batch = [event(s) for s in range(start, start + 20)]
        status, body = await a("POST", f"{RUNS}/r1/events", json={"events": batch})
        assert status == 200, body
    status, body = await a("PUT", f"{RUNS}/r1/files/model.txt", data=b"weights")
    assert status == 200, body

    status, body = await b("GET", RUNS)
    assert status == 200
    assert [(r["id"], r["config"], r["last_seq"]) for r in body["runs"]] == [
        ("r1", {"lr": 0.1}, 60)
    ]
    status, body = await b("GET", f"{RUNS}/r1/history?keys=x&buckets=1000")
    assert status == 200
    (series,) = body["series"]
    assert series["last"] == list(range(1, 61, 2))
    status, body = await b("GET", f"{RUNS}/r1/output")
    assert [x["text"] for x in body["lines"]] == [f"line {s}" for s in range(2, 61, 2)]
    assert await b("GET", f"{RUNS}/r1/files/model.txt") == (200, b"weights")


async def test_keys_are_shared_between_processes(
    pair: Pair, session: aiohttp.ClientSession
) -> None:
    a = Api(session, pair.a.url, pair.admin_key)
    b = Api(session, pair.b.url, pair.admin_key)
    status, body = await b("POST", "/api/v1/keys", json={"name": "ci", "projects": {P: "write"}})
    assert status == 201
    key, key_id = body["key"], body["id"]
    assert (await a("POST", RUNS, key=key, json={"id": "r1"}))[0] == 200  # made on B, works on A
    assert (await b("GET", RUNS, key=key))[0] == 200  # B now holds it in its cache

    status, _ = await a("DELETE", f"/api/v1/keys/{key_id}")
    assert status == 200
    assert (await a("GET", RUNS, key=key))[0] == 401  # at once on the revoking process

    async def refused_on_b() -> bool:
        return (await b("GET", RUNS, key=key))[0] == 401

    await until(refused_on_b, CACHE_TTL + START_DEADLINE)  # on the other within the cache TTL


async def test_overlapping_batches_to_both_processes_store_each_event_once(
    pair: Pair, session: aiohttp.ClientSession
) -> None:
    a = Api(session, pair.a.url, pair.admin_key)
    b = Api(session, pair.b.url, pair.admin_key)
    assert (await a("POST", RUNS, json={"id": "r1"}))[0] == 200
    events = [event(s) for s in range(1, 401)]

    async def sender(api: Api, first: int) -> None:
        """Send overlapping batches of 25 (stride 20); on a gap resend from where asked."""
        i = first
        while i < len(events):
            batch = events[i : i + 25]
            status, body = await api("POST", f"{RUNS}/r1/events", json={"events": batch})
            if status == 409:
                i = body["error"]["expected"] - 1
                continue
            assert status == 200, body
            i += 20

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender, a, 0)
        tg.start_soon(sender, b, 40)  # starts ahead: gaps first, then overlaps

    _, body = await b("GET", f"{RUNS}/r1/output?limit=1000")
    assert [x["text"] for x in body["lines"]] == [f"line {s}" for s in range(2, 401, 2)]
    _, body = await a("GET", f"{RUNS}/r1/history?keys=x&buckets=1000")
    (series,) = body["series"]
    assert series["last"] == list(range(1, 401, 2))
    assert (await b("GET", f"{RUNS}/r1/last_seq"))[1] == {"last_seq": 400}
