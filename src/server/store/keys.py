"""The ``api_keys`` table (migration 3) on both backends.

What a key may do, how it is made and how lookups are cached is
:mod:`server.auth`'s business; this module only reads and writes rows. It is
package-internal and uses the store's own connection: on SQLite the store's
worker thread (key writes queue with every other write, as SQLite needs), on
PostgreSQL the store's pool. :func:`key_table` picks the backend.

Two operations must hold across every process sharing a database: creating
the first admin key (only one, however many servers start at once) and
refusing to revoke the last active admin key. Both run under a lock that
spans processes: SQLite's write lock (``BEGIN IMMEDIATE``), PostgreSQL's
transaction-scoped advisory lock :data:`PG_KEYS_LOCK`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from .base import Store, StoreError
from .migrations import PG_LOCK_KEY
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

T = TypeVar("T")

#: Advisory lock serialising key bootstrap and admin revocation (PostgreSQL).
PG_KEYS_LOCK = PG_LOCK_KEY + 1

_COLS = "id, name, hash, admin, projects, created, revoked, last_used"


class LastAdminKeyError(StoreError):
    """Revoking this key would leave no active admin key."""

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"key {key_id!r} is the last active admin key; create another admin key "
            "first (POST /api/v1/keys or `runbus server keys create --admin`), then revoke it"
        )
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One stored key: never the key itself, only ``hash`` (hex SHA-256)."""

    id: str
    name: str
    hash: str
    admin: bool
    projects: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    revoked: float | None = None
    last_used: float | None = None


class KeyTable(Protocol):
    """Row access to ``api_keys``; every method is a coroutine."""

    async def insert(self, row: KeyRow) -> bool:
        """Add a key; False (nothing written) when its id or hash already exists."""
        ...

    async def find(self, digest: str) -> KeyRow | None:
        """The key whose hash is ``digest``, revoked or not, or None."""
        ...

    async def all(self) -> list[KeyRow]:
        """Every key, oldest first, revoked ones included."""
        ...

    async def revoke(self, key_id: str, when: float) -> KeyRow | None:
        """Mark a key revoked at ``when`` (kept if already revoked); the row as stored.

        None for an unknown id. Raises :class:`LastAdminKeyError`.
        """
        ...

    async def touch(self, key_id: str, when: float) -> None:
        """Record ``when`` as the key's last use."""
        ...

    async def bootstrap(self, imported: Sequence[KeyRow], admin: KeyRow | None) -> tuple[int, bool]:
        """Insert ``imported`` rows whose id and hash are new, then ``admin`` if no key exists.

        One locked transaction, so of several processes starting together only
        one creates an admin key. Returns (rows imported, whether ``admin`` was
        inserted).
        """
        ...


def key_table(store: Store) -> KeyTable:
    """The key table of ``store`` (a store opened by :func:`server.store.open_store`)."""
    if isinstance(store, SqliteStore):
        return _SqliteKeys(store)
    from .postgres import PostgresStore  # imported here: SQLite users need no asyncpg

    if isinstance(store, PostgresStore):
        return _PostgresKeys(store)
    raise TypeError(f"API keys need a SqliteStore or PostgresStore, got {type(store).__name__}")


def _row(r: Sequence[Any], projects: dict[str, str]) -> KeyRow:
    return KeyRow(
        id=r[0],
        name=r[1],
        hash=r[2],
        admin=bool(r[3]),
        projects=projects,
        created=r[5],
        revoked=r[6],
        last_used=r[7],
    )


# --------------------------------------------------------------------------- SQLite


class _SqliteKeys:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        store = self._store
        return await store._call(lambda: fn(store._db()))

    @staticmethod
    def _from(r: Sequence[Any]) -> KeyRow:
        return _row(r, orjson.loads(r[4]))

    @staticmethod
    def _insert(conn: sqlite3.Connection, row: KeyRow) -> bool:
        cur = conn.execute(
            f"INSERT INTO api_keys ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                row.id,
                row.name,
                row.hash,
                int(row.admin),
                orjson.dumps(row.projects).decode(),
                row.created,
                row.revoked,
                row.last_used,
            ),
        )
        return cur.rowcount == 1

    @staticmethod
    def _locked(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def insert(self, row: KeyRow) -> bool:
        return await self._run(lambda c: self._insert(c, row))

    async def find(self, digest: str) -> KeyRow | None:
        def q(c: sqlite3.Connection) -> KeyRow | None:
            r = c.execute(f"SELECT {_COLS} FROM api_keys WHERE hash = ?", (digest,)).fetchone()
            return None if r is None else self._from(r)

        return await self._run(q)

    async def all(self) -> list[KeyRow]:
        def q(c: sqlite3.Connection) -> list[KeyRow]:
            rows = c.execute(f"SELECT {_COLS} FROM api_keys ORDER BY created, id").fetchall()
            return [self._from(r) for r in rows]

        return await self._run(q)

    async def revoke(self, key_id: str, when: float) -> KeyRow | None:
        def q(c: sqlite3.Connection) -> KeyRow | None:
            def body() -> KeyRow | None:
                r = c.execute(f"SELECT {_COLS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                if r is None:
                    return None
                row = self._from(r)
                if row.revoked is not None:
                    return row
                if row.admin:
                    (others,) = c.execute(
                        "SELECT count(*) FROM api_keys "
                        "WHERE admin = 1 AND revoked IS NULL AND id != ?",
                        (key_id,),
                    ).fetchone()
                    if others == 0:
                        raise LastAdminKeyError(key_id)
                c.execute("UPDATE api_keys SET revoked = ? WHERE id = ?", (when, key_id))
                return dataclasses.replace(row, revoked=when)

            return self._locked(c, body)

        return await self._run(q)

    async def touch(self, key_id: str, when: float) -> None:
        await self._run(
            lambda c: c.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (when, key_id))
        )

    async def bootstrap(self, imported: Sequence[KeyRow], admin: KeyRow | None) -> tuple[int, bool]:
        def q(c: sqlite3.Connection) -> tuple[int, bool]:
            def body() -> tuple[int, bool]:
                n = sum(self._insert(c, row) for row in imported)
                empty = c.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is None
                return n, admin is not None and empty and self._insert(c, admin)

            return self._locked(c, body)

        return await self._run(q)


# --------------------------------------------------------------------------- PostgreSQL


class _PostgresKeys:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    @staticmethod
    def _from(r: Sequence[Any]) -> KeyRow:
        return _row(r, dict(r[4]))

    @staticmethod
    async def _insert(conn: Any, row: KeyRow) -> bool:
        status = await conn.execute(
            f"INSERT INTO api_keys ({_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT DO NOTHING",
            row.id,
            row.name,
            row.hash,
            row.admin,
            row.projects,
            row.created,
            row.revoked,
            row.last_used,
        )
        return bool(status == "INSERT 0 1")

    async def insert(self, row: KeyRow) -> bool:
        async with self._store._p().acquire() as conn:
            return await self._insert(conn, row)

    async def find(self, digest: str) -> KeyRow | None:
        r = await self._store._p().fetchrow(f"SELECT {_COLS} FROM api_keys WHERE hash = $1", digest)
        return None if r is None else self._from(r)

    async def all(self) -> list[KeyRow]:
        rows = await self._store._p().fetch(f"SELECT {_COLS} FROM api_keys ORDER BY created, id")
        return [self._from(r) for r in rows]

    async def revoke(self, key_id: str, when: float) -> KeyRow | None:
        async with self._store._p().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PG_KEYS_LOCK)
            r = await conn.fetchrow(f"SELECT {_COLS} FROM api_keys WHERE id = $1", key_id)
            if r is None:
                return None
            row = self._from(r)
            if row.revoked is not None:
                return row
            if row.admin:
                others = await conn.fetchval(
                    "SELECT count(*) FROM api_keys WHERE admin AND revoked IS NULL AND id != $1",
                    key_id,
                )
                if others == 0:
                    raise LastAdminKeyError(key_id)
            await conn.execute("UPDATE api_keys SET revoked = $1 WHERE id = $2", when, key_id)
            return dataclasses.replace(row, revoked=when)

    async def touch(self, key_id: str, when: float) -> None:
        await self._store._p().execute(
            "UPDATE api_keys SET last_used = $1 WHERE id = $2", when, key_id
        )

    async def bootstrap(self, imported: Sequence[KeyRow], admin: KeyRow | None) -> tuple[int, bool]:
        async with self._store._p().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PG_KEYS_LOCK)
            n = 0
            for row in imported:
                n += await self._insert(conn, row)
            empty = await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM api_keys)")
            return n, admin is not None and bool(empty) and await self._insert(conn, admin)
