"""Run files on disk: the server decides where bytes go, never the client.

Bytes of ``<project>/<run_id>/<path>`` live under ``<data_dir>/files/``. Every
name that reaches the filesystem passes :func:`check_segment`, and the walk
from the storage root to the file opens one directory at a time with
``O_NOFOLLOW`` relative to its parent's descriptor (``dir_fd``), so a symlink
planted anywhere in the tree (by another process, or an earlier bug) is
refused instead of followed. Writes go to a fresh temporary name
(``O_CREAT | O_EXCL``) and are renamed into place: a reader never sees half a
file, and a rename replaces a symlink rather than writing through it.

Every function here is blocking; the app runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote

MAX_SEGMENT_BYTES = 255  # NAME_MAX on Linux and macOS
MAX_PATH_BYTES = 1024
MAX_SEGMENTS = 32

# Percent-encoded '/', '\', '.', NUL: a client has no reason to encode these, and
# decoding them after routing is the classic way to smuggle '..' or a separator.
_FORBIDDEN_ESCAPES = ("%2f", "%5c", "%2e", "%00")


class UnsafePathError(ValueError):
    """A client-supplied name could escape or confuse the storage tree; it is refused."""


class StoredFileNotFoundError(LookupError):
    """No bytes were uploaded for this path."""


def check_segment(name: str, what: str = "path segment") -> str:
    """Return ``name`` if it is safe as one directory entry; else raise UnsafePathError."""
    if not name:
        raise UnsafePathError(f"empty {what} (doubled or trailing '/')")
    if name in (".", ".."):
        raise UnsafePathError(f"{what} {name!r} is not allowed")
    for bad, label in (("/", "'/'"), ("\\", "a backslash"), ("\0", "NUL")):
        if bad in name:
            raise UnsafePathError(f"{what} {name!r} contains {label}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        raise UnsafePathError(f"{what} is longer than {MAX_SEGMENT_BYTES} bytes")
    return name


def parse_raw_path(raw: str) -> list[str]:
    """Split a still percent-encoded URL path tail into checked segments.

    Raises :class:`UnsafePathError` for ``..``, absolute paths, backslashes,
    encoded separators or dots, NUL, empty segments and over-long names.
    """
    lowered = raw.lower()
    for esc in _FORBIDDEN_ESCAPES:
        if esc in lowered:
            raise UnsafePathError(
                f"path {raw!r} contains the escape {esc!r}; send '/', '.' and '\\' unencoded"
            )
    if raw.startswith("/"):
        raise UnsafePathError(f"path {raw!r} is absolute; send a path relative to the run")
    if len(raw.encode()) > MAX_PATH_BYTES:
        raise UnsafePathError(f"path is longer than {MAX_PATH_BYTES} bytes")
    segments = [unquote(s, errors="strict") for s in raw.split("/")]
    if len(segments) > MAX_SEGMENTS:
        raise UnsafePathError(f"path has more than {MAX_SEGMENTS} segments")
    return [check_segment(s) for s in segments]


def _open_dir(parent: int, name: str, *, create: bool) -> int:
    """Open directory ``name`` under descriptor ``parent``, never through a symlink."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(f"{name!r} in the storage tree is not a plain directory") from e
        raise


class FileStorage:
    """Run files under ``<data_dir>/files/<project>/<run_id>/<path>``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "files"

    def _walk(self, parts: Sequence[str], *, create: bool) -> int:
        """A descriptor of the directory ``root/parts...``; caller closes it."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for name in parts:
                nxt = _open_dir(fd, name, create=create)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_temp(self, project: str, run_id: str, path: Sequence[str]) -> tuple[int, int, str]:
        """Create the parents and a temporary file beside the target.

        Returns ``(dir_fd, file_fd, temp_name)``; finish with :meth:`commit` or
        :meth:`abort`.
        """
        parts = [check_segment(project, "project"), check_segment(run_id, "run id"), *path]
        dfd = self._walk(parts[:-1], create=True)
        tmp = f".upload-{secrets.token_hex(8)}.tmp"
        try:
            ffd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd
            )
        except BaseException:
            os.close(dfd)
            raise
        return dfd, ffd, tmp

    @staticmethod
    def write(ffd: int, data: bytes) -> None:
        """Write all of ``data`` to the temporary file."""
        view = memoryview(data)
        while view:
            n = os.write(ffd, view)
            view = view[n:]

    @staticmethod
    def commit(dfd: int, ffd: int, tmp: str, name: str) -> None:
        """Make the upload durable and move it to ``name`` (replacing, never following)."""
        try:
            os.fsync(ffd)
            os.close(ffd)
            ffd = -1
            st = None
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if st is not None and not _is_regular(st.st_mode):
                raise UnsafePathError(f"{name!r} exists in the storage tree and is not a file")
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            if ffd >= 0:
                os.close(ffd)
            _unlink(dfd, tmp)
            os.close(dfd)
            raise
        os.close(dfd)

    @staticmethod
    def abort(dfd: int, ffd: int, tmp: str) -> None:
        """Drop an unfinished upload."""
        os.close(ffd)
        _unlink(dfd, tmp)
        os.close(dfd)

    def _parent(self, project: str, run_id: str, path: Sequence[str]) -> tuple[int, str]:
        """An fd of the stored file's directory (walked without symlinks) and its name."""
        parts = [check_segment(project, "project"), check_segment(run_id, "run id"), *path]
        try:
            return self._walk(parts[:-1], create=False), parts[-1]
        except FileNotFoundError as e:
            raise StoredFileNotFoundError("/".join(path)) from e

    def read(self, project: str, run_id: str, path: Sequence[str]) -> bytes:
        """The bytes of a stored file; raises StoredFileNotFoundError or UnsafePathError."""
        dfd, name = self._parent(project, run_id, path)
        try:
            try:
                ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
            except FileNotFoundError as e:
                raise StoredFileNotFoundError("/".join(path)) from e
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UnsafePathError(f"{name!r} is a symlink; refused") from e
                raise
            with os.fdopen(ffd, "rb") as f:
                if not _is_regular(os.fstat(f.fileno()).st_mode):
                    raise UnsafePathError(f"{name!r} is not a regular file")
                return f.read()
        finally:
            os.close(dfd)

    def exists(self, project: str, run_id: str, path: str) -> bool:
        """Whether bytes were uploaded for ``path`` (a store-reported relative path)."""
        try:
            self.read_size(project, run_id, parse_raw_path(path))
        except (UnsafePathError, StoredFileNotFoundError, OSError):
            return False
        return True

    def read_size(self, project: str, run_id: str, path: Sequence[str]) -> int:
        """Size of a stored file (same safety as :meth:`read`)."""
        dfd, name = self._parent(project, run_id, path)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError as e:
            raise StoredFileNotFoundError("/".join(path)) from e
        finally:
            os.close(dfd)
        if not _is_regular(st.st_mode):
            raise UnsafePathError("not a regular file")
        return st.st_size


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _unlink(dfd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (what the store's file records hold)."""
    return hashlib.sha256(data).hexdigest()
