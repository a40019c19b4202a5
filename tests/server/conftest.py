"""Store fixtures shared by the server tests: every test runs on SQLite and PostgreSQL.

PostgreSQL is 127.0.0.1:5432, database ``test`` (override with
``RUNBUS_TEST_POSTGRES_DSN``), a fresh schema per test, dropped afterwards.
When it is unreachable the tests skip, unless ``RUNBUS_TEST_POSTGRES=1`` (CI),
where they fail instead.
"""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from server.store import Store, open_store

StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp and asyncpg run on asyncio only.
    return "asyncio"


def _pg_dsns() -> list[str]:
    env = os.environ.get("RUNBUS_TEST_POSTGRES_DSN")
    if env:
        return [env]
    return [
        "postgresql://postgres@127.0.0.1:5432/test",
        f"postgresql://{getpass.getuser()}@127.0.0.1:5432/test",
    ]


async def _pg_connect() -> tuple[Any, str]:
    try:
        import asyncpg
    except ImportError as e:
        reason = f"asyncpg is not installed ({e})"
    else:
        errors = []
        for dsn in _pg_dsns():
            try:
                return await asyncpg.connect(dsn, timeout=5), dsn
            except (OSError, asyncpg.PostgresError) as e:
                errors.append(f"{dsn}: {e}")
        reason = "PostgreSQL unreachable: " + "; ".join(errors)
    if os.environ.get("RUNBUS_TEST_POSTGRES") == "1":
        pytest.fail(f"RUNBUS_TEST_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgres"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Opens stores on one database (a SQLite file, or a fresh PostgreSQL schema)."""
    opened: list[Store] = []
    conn = None
    schema = f"runbus_test_{uuid.uuid4().hex[:12]}"
    dsn = ""
    if request.param == "postgres":
        conn, dsn = await _pg_connect()
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
