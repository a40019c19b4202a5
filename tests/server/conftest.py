"""Store fixtures shared by the server tests: every test runs on SQLite and PostgreSQL.

PostgreSQL (reached with the ``pg_connect`` fixture of tests/conftest.py, which
skips or fails when it is unreachable) gets a fresh schema per test, dropped
afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from server.store import Store, open_store

StoreFactory = Callable[..., Awaitable[Store]]
PgConnect = Callable[[], Awaitable[tuple[Any, str]]]


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp and asyncpg run on asyncio only.
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path, pg_connect: PgConnect
) -> AsyncIterator[StoreFactory]:
    """Opens stores on one database (a SQLite file, or a fresh PostgreSQL schema)."""
    opened: list[Store] = []
    conn = None
    schema = f"runbus_test_{uuid.uuid4().hex[:12]}"
    dsn = ""
    if request.param == "postgres":
        conn, dsn = await pg_connect()
        await conn.execute(f'CREATE SCHEMA "{schema}"')

    async def make(**kw: Any) -> Store:
        if request.param == "sqlite":
            s = await open_store(tmp_path / "runbus.db", **kw)
        else:
            s = await open_store(dsn, schema=schema, max_size=4, **kw)
        opened.append(s)
        return s

    try:
        yield make
    finally:
        for s in opened:
            await s.aclose()
        if conn is not None:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await conn.close()
