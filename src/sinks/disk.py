"""The disk sink: the run directory, runbus's source of truth.

``events.log`` gets every stored event in checksummed frames
(:mod:`pipeline.eventlog`); ``config.json``, ``summary.json`` and
``metadata.json`` are kept current by atomic rewrites (temp file, fsync,
rename) at each flush; ``output.log`` gets console output. All file I/O runs
in a worker thread, never on the event loop.

A failed append is rolled back (the file is truncated to where the frame
began), so a full disk or a vanished directory never leaves a half frame
behind what was already written.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from pipeline import events as ev
from pipeline.eventlog import encode_events, read_events
from pipeline.jsoncodec import dumps
from pipeline.runinfo import RunInfo
from sinks.base import SinkClosedError

#: Events per frame: bounds what one damaged frame can take with it.
FRAME_EVENTS = 256
EVENTS_FILE = "events.log"
LATEST = "latest-run"
#: Prefix of each stderr line in ``output.log`` (stdout lines are unmarked).
STDERR_MARK = "[stderr] "


class DiskSink:
    """Writes the run directory."""

    name = "disk"

    def __init__(self, directory: Path, *, compress: bool = False) -> None:
        self.dir = Path(directory)
        self.compress = compress
        self._fd: int | None = None
        self._out_fd: int | None = None
        self._pending: list[ev.Event] = []
        self._config: dict[str, Any] = {}
        self._metadata: dict[str, Any] = {}
        self._summary: dict[str, Any] | None = None
        self._dirty: set[str] = set()
        self._output: list[str] = []
        self._closed = False
        self._resumed = False

    @classmethod
    def from_run(cls, run: RunInfo) -> DiskSink:
        """Entry point factory: the disk sink for ``run``'s directory."""
        compress = bool(getattr(run.settings, "compress", False))
        return cls(run.dir, compress=compress)

    def __repr__(self) -> str:
        return f"DiskSink({str(self.dir)!r})"

    # -- protocol ------------------------------------------------------------

    async def open(self, run: RunInfo) -> None:
        """Create the run directory and open ``events.log`` for appending."""
        self._resumed = run.resumed
        await anyio.to_thread.run_sync(self._open_sync)

    async def write(self, batch: Sequence[ev.Event]) -> None:
        """Queue stored events; whole frames go to the file as they fill."""
        if self._closed:
            raise SinkClosedError("disk sink is closed")
        pending = self._pending
        for e in batch:
            kind = e.kind
            if kind == "row" or kind == "partial" or kind == "stats":
                pending.append(e)
                continue
            if kind == "config":
                self._config.update(e.values)  # type: ignore[union-attr]
                self._dirty.add("config")
            elif kind == "metadata":
                self._metadata.update(e.values)  # type: ignore[union-attr]
                self._dirty.add("metadata")
            elif kind == "summary":
                self._summary = e.values  # type: ignore[union-attr]
                self._dirty.add("summary")
            elif kind == "output":
                self._output.append(output_text(e))  # type: ignore[arg-type]
            elif kind == "log":
                continue  # input events are not stored
            pending.append(e)
        if len(pending) >= FRAME_EVENTS:
            cut = len(pending) - len(pending) % FRAME_EVENTS
            frames, self._pending = pending[:cut], pending[cut:]
            await anyio.to_thread.run_sync(self._append_frames, frames)

    async def flush(self) -> None:
        """Write everything held, fsync it, and rewrite changed JSON files."""
        if self._closed:
            raise SinkClosedError("disk sink is closed")
        frames, self._pending = self._pending, []
        output, self._output = self._output, []
        dirty, self._dirty = self._dirty, set()
        try:
            await anyio.to_thread.run_sync(self._flush_sync, frames, output, dirty)
        except BaseException:
            # Keep what was not written for the runner's retry.
            self._pending[:0] = frames
            self._output[:0] = output
            self._dirty |= dirty
            raise

    async def aclose(self) -> None:
        """Flush and close the files; a second call does nothing."""
        if self._closed:
            return
        try:
            if self._fd is not None:
                await self.flush()
        finally:
            self._closed = True
            await anyio.to_thread.run_sync(self._close_fds)

    # -- file work (worker thread) ---------------------------------------------

    def _open_sync(self) -> None:
        prepare_run_dir(self.dir)
        path = self.dir / EVENTS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                # Resuming: cut a torn tail so new frames follow intact ones.
                found = read_events(path.read_bytes())
                if found.valid_end < size and found.torn_bytes:
                    os.ftruncate(fd, found.valid_end)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._out_fd = os.open(
            self.dir / "output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
        )

    def _append_frames(self, events: list[ev.Event]) -> None:
        if self._fd is None:
            raise SinkClosedError("disk sink is not open")
        chunks = [
            encode_events(events[i : i + FRAME_EVENTS], compress=self.compress)
            for i in range(0, len(events), FRAME_EVENTS)
        ]
        _append(self._fd, b"".join(chunks), self.dir / EVENTS_FILE)

    def _flush_sync(self, events: list[ev.Event], output: list[str], dirty: set[str]) -> None:
        if self._fd is None:
            raise SinkClosedError("disk sink is not open")
        if events:
            self._append_frames(events)
        os.fsync(self._fd)
        if output and self._out_fd is not None:
            _append(
                self._out_fd, "".join(output).encode("utf-8", "replace"), self.dir / "output.log"
            )
            os.fsync(self._out_fd)
        if dirty:
            if "config" in dirty:
                _replace_atomically(self.dir / "config.json", dumps(self._config, pretty=True))
            if "summary" in dirty and self._summary is not None:
                _replace_atomically(self.dir / "summary.json", dumps(self._summary, pretty=True))
            if "metadata" in dirty:
                _replace_atomically(self.dir / "metadata.json", dumps(self._metadata, pretty=True))
            _fsync_dir(self.dir)

    def _close_fds(self) -> None:
        for attr in ("_fd", "_out_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)
                with contextlib.suppress(OSError):
                    os.close(fd)


def output_text(e: ev.Output) -> str:
    """An output event as ``output.log`` holds it: stderr lines are marked."""
    if e.stream != "stderr":
        return e.text
    return "".join(STDERR_MARK + line for line in e.text.splitlines(keepends=True))


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory, an empty ``events.log`` and the ``latest-run`` link.

    ``init()`` calls this before it returns, so a run killed at once still
    leaves a directory that ``read_run`` and ``runbus ls`` recognise.
    Idempotent; raises ``OSError`` when the directory cannot be made.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / EVENTS_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    os.close(fd)
    parent = run_dir.parent
    tmp = parent / f".{LATEST}.{os.getpid()}.{run_dir.name}"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, parent / LATEST)
    except OSError:
        # A convenience link only: a filesystem without symlinks is fine.
        with contextlib.suppress(OSError):
            tmp.unlink()


def _append(fd: int, data: bytes, path: Path) -> None:
    """Append all of ``data`` or nothing: a failed write is truncated away."""
    start = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise OSError(exc.errno, f"{exc.strerror} (writing {path})", str(path)) from exc


def _replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(exc.errno, f"{exc.strerror} (writing {path})", str(path)) from exc
    os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
