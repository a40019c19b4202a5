"""API keys: random, stored hashed, scoped to projects, kept in the store's database.

A key is ``secrets.token_urlsafe(32)`` (256 random bits). Only its SHA-256 is
kept. A slow password hash (bcrypt, scrypt) exists to make guessing a
*low-entropy* secret expensive; a 256-bit random key cannot be guessed whatever
the hash costs, so one SHA-256 is enough and keeps every request cheap.

Keys live in the ``api_keys`` table (:mod:`server.store.keys`), so every server
process over one database sees the same keys. Each process caches a key's
rights for :data:`CACHE_TTL` seconds: a request costs a dict lookup, and a key
revoked anywhere stops working everywhere within that time (at once on the
process that revoked it).

Servers before keys moved into the database kept them in ``<data>/keys.json``;
:meth:`Keys.bootstrap` imports that file once and renames it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

import orjson

from .store import Store
from .store.keys import KeyRow, LastAdminKeyError, key_table

__all__ = [
    "CACHE_TTL",
    "LEGACY_KEYS_FILE",
    "Bootstrap",
    "KeyFileError",
    "KeyInfo",
    "KeyInputError",
    "KeyNotFoundError",
    "Keys",
    "LastAdminKeyError",
    "Principal",
    "Right",
    "hash_key",
]

#: A right on a project; ``write`` implies ``read``.
Right: TypeAlias = Literal["read", "write"]

#: Seconds a process trusts a cached key lookup; the longest a revoked key keeps
#: working on the processes that did not revoke it.
CACHE_TTL = 5.0
#: Cached keys per process; past it the oldest entry goes.
CACHE_SIZE = 4096
#: ``last_used`` is written at most this often per key and process (seconds),
#: so reading a key stays a read.
LAST_USED_EVERY = 60.0
#: Where servers before the keys table kept keys, under the data directory.
LEGACY_KEYS_FILE = "keys.json"

_MAX_NAME = 200
_MAX_PROJECT = 255
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class KeyFileError(Exception):
    """The legacy keys file is unreadable or malformed; fix or move it and restart."""


class KeyInputError(ValueError):
    """A key was asked for with a bad name, project or right (the message says which)."""


class KeyNotFoundError(LookupError):
    """No key has this id."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key has id {key_id!r}; list the keys to see their ids")
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: an admin, or a key with rights on some projects."""

    key_id: str
    admin: bool = False
    projects: dict[str, str] = field(default_factory=dict)  # project -> "read" | "write"

    def can(self, project: str, right: Right) -> bool:
        """Whether this key may read (or write) ``project``; write implies read."""
        if self.admin:
            return True
        granted = self.projects.get(project)
        if granted is None:
            return False
        return right == "read" or granted == "write"

    def can_see(self, project: str) -> bool:
        """Whether ``project`` appears in this key's project listing."""
        return self.can(project, "read")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key: never the key, never its hash."""

    id: str
    name: str
    admin: bool
    projects: dict[str, str]
    created: float
    revoked: float | None
    last_used: float | None

    def as_json(self) -> dict[str, Any]:
        """The key as the API and ``runbus server keys list --json`` show it."""
        return {
            "id": self.id,
            "name": self.name,
            "admin": self.admin,
            "projects": self.projects,
            "created": self.created,
            "revoked": self.revoked,
            "last_used": self.last_used,
        }


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What :meth:`Keys.bootstrap` did at start."""

    imported: int = 0  # keys taken over from the legacy file
    legacy_renamed: Path | None = None  # where this process moved the legacy file
    admin_key: str | None = None  # the first admin key, in clear: print it once


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_projects(projects: object) -> dict[str, str]:
    """``projects`` as ``{project: "read" | "write"}``; :class:`KeyInputError` otherwise."""
    if not isinstance(projects, Mapping):
        raise KeyInputError(
            f'projects must be an object like {{"mnist": "write"}}, got {type(projects).__name__}'
        )
    out: dict[str, str] = {}
    for p, r in projects.items():
        if not isinstance(p, str) or not p or len(p) > _MAX_PROJECT:
            raise KeyInputError(f"project name {p!r} must be a non-empty string of ≤ 255 chars")
        if r not in ("read", "write"):
            raise KeyInputError(f"right for project {p!r} must be 'read' or 'write', got {r!r}")
        out[p] = cast(str, r)
    return out


def _info(row: KeyRow) -> KeyInfo:
    return KeyInfo(
        row.id, row.name, row.admin, dict(row.projects), row.created, row.revoked, row.last_used
    )


class Keys:
    """The server's API keys over a store, with a short per-process lookup cache.

    ``ttl``/``max_cached``: see :data:`CACHE_TTL`, :data:`CACHE_SIZE`.
    ``clock`` is the monotonic time source of the cache (tests inject one).
    Store failures propagate as :class:`~server.store.StoreError`.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = CACHE_TTL,
        max_cached: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = key_table(store)
        self.ttl = ttl
        self._max = max(1, max_cached)
        self._clock = clock
        # digest -> (expires at, principal); insertion order is age order.
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._touched: dict[str, float] = {}  # key id -> clock() of the last last_used write

    async def create(
        self, *, name: str = "", admin: bool = False, projects: Mapping[str, str] | None = None
    ) -> tuple[str, KeyInfo]:
        """Create a key; return it (the only time it exists in clear) and its info.

        Raises :class:`KeyInputError` for a bad name, project or right, or a
        non-admin key without any project.
        """
        if not isinstance(name, str) or len(name) > _MAX_NAME:
            raise KeyInputError(f"name must be a string of ≤ {_MAX_NAME} chars, got {name!r}")
        if not isinstance(admin, bool):
            raise KeyInputError(f"admin must be true or false, got {admin!r}")
        rights = check_projects(projects or {})
        if not admin and not rights:
            raise KeyInputError(
                'a key needs rights on at least one project ({"mnist": "read"}) or admin: true'
            )
        while True:
            key = secrets.token_urlsafe(32)
            row = KeyRow(
                id=secrets.token_hex(6),
                name=name,
                hash=hash_key(key),
                admin=admin,
                projects=rights,
                created=time.time(),
            )
            # A clash of 48-bit ids is unlikely but must not be an error; draw again.
            if await self._table.insert(row):
                return key, _info(row)

    async def lookup(self, key: str) -> Principal | None:
        """The principal of an active ``key``, or None (unknown or revoked).

        The store finds the row by the key's SHA-256 through an index; the
        digest of a 256-bit random key gives a timing attack nothing to learn,
        and the fetched hash is still compared in constant time.
        """
        digest = hash_key(key)
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await self._table.find(digest)
        if row is None or row.revoked is not None or not hmac.compare_digest(row.hash, digest):
            self._cache.pop(digest, None)
            return None
        principal = Principal(row.id, row.admin, dict(row.projects))
        self._cache.pop(digest, None)
        while len(self._cache) >= self._max:
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = (now + self.ttl, principal)
        if now - self._touched.get(row.id, -LAST_USED_EVERY) >= LAST_USED_EVERY:
            self._touched[row.id] = now
            await self._table.touch(row.id, time.time())
        return principal

    async def list_keys(self) -> list[KeyInfo]:
        """Every key, oldest first, revoked ones included (``revoked`` set)."""
        return [_info(r) for r in await self._table.all()]

    async def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key (revoking it again changes nothing); return its info.

        Raises :class:`KeyNotFoundError`, :class:`LastAdminKeyError`.
        """
        row = await self._table.revoke(key_id, time.time())
        if row is None:
            raise KeyNotFoundError(key_id)
        # Other processes notice within the TTL; this one at once.
        for digest in [d for d, (_, p) in self._cache.items() if p.key_id == key_id]:
            del self._cache[digest]
        return _info(row)

    async def bootstrap(self, data_dir: Path, *, create_admin: bool = True) -> Bootstrap:
        """Import ``<data_dir>/keys.json`` once; create the first admin key if there is no key.

        Safe with several processes starting together: one lock covers the
        import and the creation, so only one admin key is ever created. The
        legacy file is renamed to ``keys.json.imported`` afterwards. Raises
        :class:`KeyFileError` for a legacy file that cannot be used.
        """
        legacy = Path(data_dir) / LEGACY_KEYS_FILE
        rows = read_legacy_keys(legacy)
        key = secrets.token_urlsafe(32) if create_admin else ""
        admin = None
        if create_admin:
            admin = KeyRow(
                id=secrets.token_hex(6),
                name="first admin",
                hash=hash_key(key),
                admin=True,
                projects={},
                created=time.time(),
            )
        imported, created = await self._table.bootstrap(rows or [], admin)
        renamed = None
        if rows is not None:
            target = legacy.with_name(LEGACY_KEYS_FILE + ".imported")
            try:
                os.replace(legacy, target)
                renamed = target
            except FileNotFoundError:
                pass  # another process sharing the data directory moved it first
        return Bootstrap(imported, renamed, key if created else None)


def read_legacy_keys(path: Path) -> list[KeyRow] | None:
    """The keys of a legacy ``keys.json``, or None when there is no such file.

    Raises :class:`KeyFileError` when it exists but cannot be used.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e}") from e
    try:
        rows = []
        for entry in orjson.loads(raw)["keys"]:
            if not isinstance(entry["id"], str) or not _HEX64.match(str(entry["hash"])):
                raise TypeError("id must be a string and hash 64 hex digits")
            rows.append(
                KeyRow(
                    id=entry["id"],
                    name=str(entry.get("name") or ""),
                    hash=entry["hash"],
                    admin=bool(entry.get("admin")),
                    projects=check_projects(entry.get("projects") or {}),
                    created=float(entry.get("created") or time.time()),
                )
            )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise KeyFileError(
            f"{path} is malformed ({e}); restore it from a backup, or move it away "
            "(its keys will stop working) and restart"
        ) from e
    return rows
