"""API keys: random, stored hashed, compared in constant time, scoped to projects.

A key is ``secrets.token_urlsafe(32)`` (256 random bits). Only its SHA-256 is
kept. A slow password hash (bcrypt, scrypt) exists to make guessing a
*low-entropy* secret expensive; a 256-bit random key cannot be guessed whatever
the hash costs, so one SHA-256 is enough and keeps every request cheap.

The Store protocol has no table for keys, so they live in ``<data_dir>/keys.json``
(mode 0600, replaced atomically: a crash mid-write leaves the old file). That
file is per server process; several processes over one PostgreSQL database need
the same file (see docs/server-api.md).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import orjson

#: A right on a project; ``write`` implies ``read``.
Right: TypeAlias = Literal["read", "write"]

KEYS_FILE = "keys.json"


class KeyFileError(Exception):
    """The keys file is unreadable or malformed; fix or remove it and restart."""


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


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """The server's keys, loaded from and saved to ``<data_dir>/keys.json``.

    Raises :class:`KeyFileError` when the file exists but cannot be used.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / KEYS_FILE
        self._entries: list[dict[str, Any]] = []
        self._load()

    # ------------------------------------------------------------------ file

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            raise KeyFileError(f"cannot read {self.path}: {e}") from e
        try:
            doc = orjson.loads(raw)
            entries = doc["keys"]
            for entry in entries:
                if not isinstance(entry["id"], str) or not isinstance(entry["hash"], str):
                    raise TypeError("id and hash must be strings")
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise KeyFileError(
                f"{self.path} is malformed ({e}); restore it from a backup, or move it "
                "away to have a new admin key created at the next start"
            ) from e
        self._entries = list(entries)

    def _save(self) -> None:
        """Write the file atomically with mode 0600 (never readable by others)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{KEYS_FILE}.{secrets.token_hex(6)}.tmp")
        data = orjson.dumps({"version": 1, "keys": self._entries}, option=orjson.OPT_INDENT_2)
        # O_EXCL + 0600 at creation: the secret hashes are never briefly world-readable.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # make the rename itself durable
        finally:
            os.close(dfd)

    # ------------------------------------------------------------------ keys

    def __len__(self) -> int:
        return len(self._entries)

    def create(
        self, *, admin: bool = False, projects: dict[str, str] | None = None, name: str = ""
    ) -> tuple[str, Principal]:
        """Create a key; return it (the only time it exists in clear) and its principal.

        Raises ``ValueError`` for a right other than ``read`` or ``write``.
        """
        projects = dict(projects or {})
        for p, r in projects.items():
            if r not in ("read", "write"):
                raise ValueError(f"right for project {p!r} must be 'read' or 'write', got {r!r}")
        key = secrets.token_urlsafe(32)
        key_id = secrets.token_hex(4)
        self._entries.append(
            {
                "id": key_id,
                "name": name,
                "hash": hash_key(key),
                "admin": admin,
                "projects": projects,
                "created": time.time(),
            }
        )
        self._save()
        return key, Principal(key_id, admin, projects)

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key``, or None.

        Compares against every stored hash with ``hmac.compare_digest`` and
        does not stop at a match, so timing says nothing about which entry (if
        any) matched.
        """
        digest = hash_key(key)
        found: dict[str, Any] | None = None
        for e in self._entries:
            if hmac.compare_digest(digest, e["hash"]) and found is None:
                found = e
        if found is None:
            return None
        return Principal(
            str(found["id"]), bool(found.get("admin")), dict(found.get("projects") or {})
        )
