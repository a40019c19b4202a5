"""Versioned schema migrations for both backends.

Each migration has a version number and the SQL for SQLite and for
PostgreSQL. A store applies, at open, every migration above the highest version
recorded in ``schema_version``, each in its own transaction together with the
row that records it, so a crash mid-migration leaves the previous version
intact and applying twice is harmless. PostgreSQL takes an advisory lock first
because several server processes may open one database at the same moment.

To change the schema, append a migration; never edit one that has shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rollup import add_nf_sql, backfill_sql, rollup_schema


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``version`` and its SQL per backend (``;``-separated)."""

    version: int
    description: str
    sqlite: str
    postgres: str


# The narrow tables are keyed (run, key, step): that primary key is the index a
# history query walks, and on SQLite WITHOUT ROWID makes it the table itself,
# so one key's points sit together on disk. Keys are interned into ``keys`` so
# each point stores two integers instead of the key's name.
_V1_SQLITE = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    run_id TEXT NOT NULL,
    name TEXT,
    group_name TEXT,
    notes TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    config TEXT NOT NULL DEFAULT '{}',
    summary TEXT NOT NULL DEFAULT '{}',
    metadata TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    exit_code INTEGER,
    created REAL NOT NULL,
    heartbeat_ts REAL NOT NULL,
    finished_ts REAL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    partial_step INTEGER,
    partial_keys TEXT NOT NULL DEFAULT '[]',
    stats_count INTEGER NOT NULL DEFAULT 0,
    output_lines INTEGER NOT NULL DEFAULT 0,
    UNIQUE (project, run_id)
);
CREATE INDEX runs_project_created ON runs (project, created);
CREATE TABLE keys (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE series (
    run INTEGER NOT NULL, key INTEGER NOT NULL, step INTEGER NOT NULL,
    ts REAL NOT NULL, runtime REAL NOT NULL, value REAL, kind INTEGER NOT NULL,
    PRIMARY KEY (run, key, step)
) WITHOUT ROWID;
CREATE TABLE system (
    run INTEGER NOT NULL, key INTEGER NOT NULL, step INTEGER NOT NULL,
    ts REAL NOT NULL, runtime REAL NOT NULL, value REAL, kind INTEGER NOT NULL,
    PRIMARY KEY (run, key, step)
) WITHOUT ROWID;
CREATE TABLE row_values (
    run INTEGER NOT NULL, key INTEGER NOT NULL, step INTEGER NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (run, key, step)
) WITHOUT ROWID;
CREATE TABLE output (
    run INTEGER NOT NULL, line_no INTEGER NOT NULL, ts REAL NOT NULL,
    stream TEXT NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (run, line_no)
) WITHOUT ROWID;
CREATE TABLE files (
    run INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (run, path)
) WITHOUT ROWID;
"""

_V1_POSTGRES = """
CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    project TEXT NOT NULL,
    run_id TEXT NOT NULL,
    name TEXT,
    group_name TEXT,
    notes TEXT,
    tags JSONB NOT NULL DEFAULT '[]',
    config JSONB NOT NULL DEFAULT '{}',
    summary JSONB NOT NULL DEFAULT '{}',
    metadata JSONB NOT NULL DEFAULT '{}',
    metrics JSONB NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    exit_code INTEGER,
    created DOUBLE PRECISION NOT NULL,
    heartbeat_ts DOUBLE PRECISION NOT NULL,
    finished_ts DOUBLE PRECISION,
    last_seq BIGINT NOT NULL DEFAULT 0,
    partial_step BIGINT,
    partial_keys JSONB NOT NULL DEFAULT '[]',
    stats_count BIGINT NOT NULL DEFAULT 0,
    output_lines BIGINT NOT NULL DEFAULT 0,
    UNIQUE (project, run_id)
);
CREATE INDEX runs_project_created ON runs (project, created);
CREATE TABLE keys (id SERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE series (
    run BIGINT NOT NULL, key INTEGER NOT NULL, step BIGINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, runtime DOUBLE PRECISION NOT NULL,
    value DOUBLE PRECISION, kind SMALLINT NOT NULL,
    PRIMARY KEY (run, key, step)
);
CREATE TABLE system (
    run BIGINT NOT NULL, key INTEGER NOT NULL, step BIGINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, runtime DOUBLE PRECISION NOT NULL,
    value DOUBLE PRECISION, kind SMALLINT NOT NULL,
    PRIMARY KEY (run, key, step)
);
CREATE TABLE row_values (
    run BIGINT NOT NULL, key INTEGER NOT NULL, step BIGINT NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (run, key, step)
);
CREATE TABLE output (
    run BIGINT NOT NULL, line_no BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL,
    stream TEXT NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (run, line_no)
);
CREATE TABLE files (
    run BIGINT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    size BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run, path)
);
"""

# Rollup blocks beside each narrow table (see rollup.py), built from the points
# migration 1 stored. The backfill is one GROUP BY over every point, so it
# takes as long as reading the database once.
_V2_SQLITE = ";\n".join(
    [
        rollup_schema("series", sqlite=True),
        rollup_schema("system", sqlite=True),
        *backfill_sql("series", nf=False),
        *backfill_sql("system", nf=False),
    ]
)
_V2_POSTGRES = ";\n".join(
    [
        rollup_schema("series", sqlite=False),
        rollup_schema("system", sqlite=False),
        *backfill_sql("series", nf=False),
        *backfill_sql("system", nf=False),
    ]
)

# API keys (server.auth): only the SHA-256 of a key is stored; UNIQUE on the
# hash is also the index every request's lookup uses. ``revoked`` keeps the row
# (who had access, and until when) instead of deleting it.
_V3_SQLITE = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    projects TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    revoked REAL,
    last_used REAL
)
"""

_V3_POSTGRES = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    hash TEXT NOT NULL UNIQUE,
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    projects JSONB NOT NULL DEFAULT '{}',
    created DOUBLE PRECISION NOT NULL,
    revoked DOUBLE PRECISION,
    last_used DOUBLE PRECISION
)
"""

# The count of finite values per rollup block, so a metric x axis can tell
# from its blocks alone that every x in them is finite. The backfill rebuilds
# every block from the points, as migration 2 did.
_V4_SQLITE = ";\n".join(
    [
        add_nf_sql("series", sqlite=True),
        add_nf_sql("system", sqlite=True),
        *backfill_sql("series"),
        *backfill_sql("system"),
    ]
)
_V4_POSTGRES = ";\n".join(
    [
        add_nf_sql("series", sqlite=False),
        add_nf_sql("system", sqlite=False),
        *backfill_sql("series"),
        *backfill_sql("system"),
    ]
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "runs, interned keys, narrow series, row values, output, files", _V1_SQLITE, _V1_POSTGRES
    ),
    Migration(2, "rollup blocks of series and system points for history", _V2_SQLITE, _V2_POSTGRES),
    Migration(3, "API keys: hashed, per-project rights, revocable", _V3_SQLITE, _V3_POSTGRES),
    Migration(4, "count of finite values in every rollup block", _V4_SQLITE, _V4_POSTGRES),
)

#: The schema version a store built from this code has.
LATEST = MIGRATIONS[-1].version

SCHEMA_VERSION_SQLITE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
)
SCHEMA_VERSION_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
    "applied_at DOUBLE PRECISION NOT NULL)"
)
#: Advisory lock key that serialises migrations across server processes.
PG_LOCK_KEY = 0x72756E627573  # "runbus"


def statements(sql: str) -> list[str]:
    """The statements of a migration script (no ``;`` inside the DDL above)."""
    return [s.strip() for s in sql.split(";") if s.strip()]


def pending(current: int) -> list[Migration]:
    """The migrations above ``current``, in order."""
    return [m for m in MIGRATIONS if m.version > current]
