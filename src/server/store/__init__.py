"""Where the server keeps runs: SQLite by default, PostgreSQL for several processes.

``await open_store(path_or_url)`` picks the backend from its argument; both
implement :class:`Store` and pass one test suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    EventTuple,
    FileRecord,
    Filter,
    OutputLine,
    ProjectRecord,
    RunNotFoundError,
    RunRecord,
    SeqGapError,
    Series,
    Store,
    StoreClosedError,
    StoreError,
)

__all__ = [
    "EventTuple",
    "FileRecord",
    "Filter",
    "OutputLine",
    "ProjectRecord",
    "RunNotFoundError",
    "RunRecord",
    "SeqGapError",
    "Series",
    "Store",
    "StoreClosedError",
    "StoreError",
    "open_store",
]


async def open_store(url_or_path: str | Path, **options: Any) -> Store:
    """Open (and migrate) the store at a SQLite path or a ``postgresql://`` URL.

    ``options`` go to the backend: ``stale_after`` (seconds, default 120),
    ``clock`` and ``exact_points`` (history ranges of at most this many points
    are bucketed exactly, larger ones from rollup blocks; default 20,000) for
    both; ``schema``, ``min_size``, ``max_size`` for PostgreSQL.
    PostgreSQL needs the ``asyncpg`` package (the ``server`` extra); it is
    imported only here, so SQLite users do not need it.
    """
    target = str(url_or_path)
    if target.startswith(("postgresql://", "postgres://")):
        import asyncpg

        from .postgres import PostgresStore

        try:
            return await PostgresStore.open(target, **options)
        except asyncpg.PostgresError as e:
            # Wrong role, database or password: one line for the operator, not a traceback.
            raise StoreError(
                f"PostgreSQL at {_redact(target)} refused: {e}; check the --db URL "
                "(user, password, host, database) and that the role may use that database"
            ) from e
    from .sqlite import SqliteStore

    return await SqliteStore.open(target, **options)


def _redact(url: str) -> str:
    """``url`` without its password, fit for an error message."""
    head, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{head}{sep}{creds.split(':', 1)[0]}:***@{host}"
