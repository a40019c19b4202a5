"""Fixtures for the online-mode tests: a loopback server on each store, a fault proxy."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from loopback import LoopbackServer

PgConnect = Callable[[], Awaitable[tuple[Any, str]]]


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[LoopbackServer]:
    """A server on SQLite."""
    s = LoopbackServer(tmp_path / "server")
    s.data.mkdir()
    s.start()
    yield s
    s.close()


async def _schema(pg_connect: PgConnect, sql: str) -> str:
    conn, dsn = await pg_connect()
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    return str(dsn)


@pytest.fixture(params=["sqlite", "postgres"])
def srv_each(
    request: pytest.FixtureRequest, tmp_path: Path, pg_connect: PgConnect
) -> Iterator[LoopbackServer]:
    """A server on SQLite, then one on a fresh PostgreSQL schema (dropped afterwards)."""
    data = tmp_path / "server"
    data.mkdir()
    if request.param == "sqlite":
        s = LoopbackServer(data)
        schema = ""
    else:
        schema = f"runbus_test_{uuid.uuid4().hex[:12]}"
        dsn = asyncio.run(_schema(pg_connect, f'CREATE SCHEMA "{schema}"'))
        s = LoopbackServer(data, dsn, schema=schema, max_size=4)
    try:
        s.start()
        yield s
    finally:
        s.close()
        if schema:
            asyncio.run(_schema(pg_connect, f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[LoopbackServer], FaultProxy]]:
    """``fault_proxy(server)``: a :class:`FaultProxy` in front of ``server``, closed afterwards."""
    made: list[FaultProxy] = []

    def make(server: LoopbackServer) -> FaultProxy:
        proxy = FaultProxy(server.port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
