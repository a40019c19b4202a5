"""Console capture: tee the process's stdout and stderr into the run.

The terminal keeps getting exactly what it got before; the run gets one
``Output`` event per completed line. Two modes:

``wrap`` (default)
    ``sys.stdout`` and ``sys.stderr`` are replaced by :class:`ConsoleStream`
    proxies that pass every call through to the stream that was there and
    record what was written. Each writing thread has its own partial line, so
    prints from many threads never tear each other's lines in the log.

``fd``
    File descriptors 1 and 2 are pointed at pipes; one reader thread copies
    the bytes on to the real descriptors and records them. This also catches
    subprocesses, C extensions and forked children. ``sys.stdout`` and
    ``sys.stderr`` are still proxied so that ``isatty()`` keeps answering for
    the real terminal.

Lines are cleaned as a terminal would show them (see :func:`render_line`):
carriage-return rewrites collapse to their final state, cursor-movement escape
sequences are applied or dropped, colour (SGR) sequences are kept, and lines
longer than ``max_line`` are cut with a note.

Writers never wait for the pipeline: completed lines go to an in-memory queue
that a thread of the capture hands to the run with ``put`` (which may wait
while the pipeline is far behind). A pipeline thread that prints therefore
never waits for itself.

One capture owns the console per process: :meth:`ConsoleCapture.start`
returns False while another one is live (docs/console.md has the rules).
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import logging
import os
import re
import select
import selectors
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pipeline.events import Item, Output

_get_ident = threading.get_ident

log = logging.getLogger("runbus")

CaptureMode = Literal["wrap", "fd"]

#: The note that replaces the end of a line longer than ``max_line``.
CUT_NOTE = " [runbus: line cut, {n} more characters]"

#: How long ``stop()`` waits for the hand-off thread to finish its current
#: ``put`` before handing over the rest itself. It only waits that long when
#: the pipeline is far behind; correctness does not depend on the value.
_HANDOVER_WAIT = 0.1
#: The hand-off thread's pause after waking, to collect a burst of lines.
_LINGER = 0.005
#: Safety net for ``stop()`` in fd mode: the reader normally drains in
#: microseconds; this only bounds a hang (a terminal that stopped reading).
_DRAIN_WAIT = 30.0
#: Bytes read from a capture pipe at once, and at most while draining at stop.
_READ_SIZE = 65536
_DRAIN_LIMIT = 64 * 1024 * 1024


#: Marks threads whose own writes must never be recorded (the capture's
#: threads, and ``stop()`` while it hands lines over): their output passes
#: straight through, so nothing runbus prints can loop back into the run.
class _Flags(threading.local):
    busy = False


_local = _Flags()

# -- line rendering ------------------------------------------------------------

# Escape sequences and the control characters that move the cursor: CSI
# (``ESC [ ... final``), OSC (``ESC ] ... BEL|ST``, titles and hyperlinks),
# DCS/SOS/PM/APC strings, two-character escapes, a lone ESC, CR and BS.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\|$)"
    r"|\x1b[ -/]*[0-~]"
    r"|\x1b"
    r"|[\r\b]"
)
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_RESET = "\x1b[0m"


def _cut_note(n: int) -> str:
    return CUT_NOTE.format(n=n)


class _Screen:
    """One terminal line: enough of a terminal to replay rewrites of a line.

    Keeps at most ``cap`` cells (a character and the SGR state it was written
    with) plus the line's full length, so a line rewritten or extended forever
    costs bounded memory.
    """

    __slots__ = ("attr", "attrs", "cap", "cells", "col", "length", "rewritten")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.cells: list[str] = []
        self.attrs: list[str] = []
        self.col = 0
        self.length = 0
        self.attr = ""  # SGR sequences in force since the last reset
        self.rewritten = False

    def feed(self, text: str) -> None:
        pos = 0
        for m in _CONTROL.finditer(text):
            start = m.start()
            if start > pos:
                self._text(text[pos:start])
            self._control(m.group())
            pos = m.end()
        if pos < len(text):
            self._text(text[pos:])

    def _text(self, t: str) -> None:
        col, cap, n = self.col, self.cap, len(t)
        if col < cap:
            cells, attrs = self.cells, self.attrs
            if col > len(cells):  # the cursor was moved past the end
                pad = col - len(cells)
                cells.extend(" " * pad)
                attrs.extend([""] * pad)
            room = min(n, cap - col)
            cells[col : col + room] = t[:room]
            attrs[col : col + room] = [self.attr] * room
        self.col = col + n
        if self.col > self.length:
            self.length = self.col

    def _control(self, seq: str) -> None:
        if seq == "\r":
            self.col = 0
            self.rewritten = True
        elif seq == "\b":
            self.col = max(0, self.col - 1)
            self.rewritten = True
        elif seq.startswith("\x1b[") and len(seq) > 2:
            final, params = seq[-1], seq[2:-1]
            if final == "m":
                if params in ("", "0"):
                    self.attr = ""
                elif params.startswith("0;"):
                    self.attr = seq
                elif len(self.attr) < 256:  # bounded: endless styling without reset
                    self.attr += seq
            elif final == "K":
                self._erase(params)
            elif final in "CDG":
                n = _number(params, 1)
                if final == "C":
                    self.col += n
                elif final == "D":
                    self.col = max(0, self.col - n)
                else:
                    self.col = max(0, n - 1)
                self.rewritten = True
        # Anything else (cursor up/down, screen erase, titles, hyperlink
        # targets, ...) cannot be shown in a line log: dropped.

    def _erase(self, params: str) -> None:
        self.rewritten = True
        col, cells, attrs = self.col, self.cells, self.attrs
        if params in ("", "0"):  # to the end of the line
            del cells[col:]
            del attrs[col:]
            self.length = min(self.length, col)
        elif params == "1":  # from the start to the cursor
            for i in range(min(col + 1, len(cells))):
                cells[i] = " "
                attrs[i] = ""
        elif params == "2":  # the whole line; the cursor stays where it is
            cells.clear()
            attrs.clear()
            self.length = 0

    def render(self) -> str:
        """The line as a terminal would show it now (no newline)."""
        cells, attrs = self.cells, self.attrs
        end = len(cells)
        if self.rewritten and self.length <= self.cap:
            # A rewritten line is padded with spaces to blank out longer
            # earlier states (tqdm does this); the padding is not content.
            while end and cells[end - 1] == " " and not attrs[end - 1]:
                end -= 1
        out: list[str] = []
        current = ""
        for i in range(end):
            a = attrs[i]
            if a != current:
                if current:
                    out.append(_RESET)
                if a:
                    out.append(a)
                current = a
            out.append(cells[i])
        if current:
            out.append(_RESET)
        if self.length > self.cap:
            out.append(_cut_note(self.length - self.cap))
        return "".join(out)


def _number(params: str, default: int) -> int:
    try:
        return int(params) if params else default
    except ValueError:
        return default


def render_line(text: str, max_line: int) -> str:
    """How one completed line (without its newline) goes into the log.

    * A trailing ``\\r`` belongs to a ``\\r\\n`` newline and is dropped.
    * ``\\r`` and ``\\b`` rewrite the line as on a terminal; what is left is
      the final state, without the trailing spaces used to blank it.
    * SGR sequences (colours, bold) are kept; erase-in-line (``ESC[K``) and
      horizontal cursor moves (``ESC[nC``/``D``/``G``) are applied; every
      other escape sequence (cursor up/down, screen clears, window titles,
      hyperlink targets) is dropped.
    * More than ``max_line`` visible characters: the rest is replaced by
      ``" [runbus: line cut, N more characters]"``.

    Plain lines (the common case) take a fast path and come back unchanged.
    """
    if text.endswith("\r"):
        text = text[:-1]
    if "\x1b" not in text and "\r" not in text and "\b" not in text:
        if len(text) > max_line:
            return text[:max_line] + _cut_note(len(text) - max_line)
        return text
    if "\r" not in text and "\b" not in text:
        visible = _SGR.sub("", text)
        if "\x1b" not in visible and len(visible) <= max_line:
            return text  # only colours: kept byte for byte
    screen = _Screen(max_line)
    screen.feed(text)
    return screen.render()


def _compact_at(max_line: int) -> int:
    """Characters of an unfinished line held as written before replaying them."""
    return max(65536, 2 * max_line)


class _Pending:
    """The unfinished line of one writer (a thread, or an fd pipe).

    Text is kept as written until it grows past a limit; then it is replayed
    into a :class:`_Screen`, so an endless ``\\r`` progress bar or a line
    without end costs bounded memory.
    """

    __slots__ = ("parts", "screen", "size")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.screen: _Screen | None = None

    def add(self, text: str, max_line: int) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > _compact_at(max_line):
            self.compact(max_line)

    def compact(self, max_line: int) -> None:
        """Replay what is held into the screen (keeping a possibly split tail)."""
        text = "".join(self.parts)
        keep = ""
        # An escape sequence or a "\r\n" may be split across writes: hold a
        # possibly unfinished tail back until more text comes.
        esc = text.rfind("\x1b", max(0, len(text) - 64))
        if esc != -1:
            m = _CONTROL.match(text, esc)
            if m is None or m.end() == len(text):
                text, keep = text[:esc], text[esc:]
        if not keep and text.endswith("\r"):
            text, keep = text[:-1], "\r"
        if self.screen is None:
            self.screen = _Screen(max_line)
        self.screen.feed(text)
        self.parts = [keep] if keep else []
        self.size = len(keep)

    def finish(self, tail: str, max_line: int) -> str:
        """The completed line: what is pending plus ``tail``, rendered."""
        text = "".join(self.parts) + tail
        screen = self.screen
        if screen is None:
            return render_line(text, max_line)
        if text.endswith("\r"):
            text = text[:-1]
        screen.feed(text)
        return screen.render()


# -- the stand-in streams --------------------------------------------------------


class ConsoleStream:
    """Stands in for ``sys.stdout`` or ``sys.stderr`` while a capture is live.

    Every call goes to the stream that was there (``runbus_passthrough``
    unless fd mode gave it a direct terminal writer): same text, same order,
    same flushing; ``isatty``, ``encoding``, ``fileno``, ``buffer`` and every
    other attribute answer as the wrapped stream does (in fd mode ``isatty``
    answers for the terminal as it was before the pipes went in). Text
    written is also recorded for the run until the capture stops; after
    that, and in a forked child, the stand-in only passes calls through.

    Errors of the wrapped stream reach the caller as before; runbus's own
    recording never raises.
    """

    def __init__(
        self,
        capture: ConsoleCapture,
        name: str,
        stream: Any,
        *,
        tee: bool,
        isatty: bool | None = None,
        passthrough: Any = None,
    ) -> None:
        self._stream = stream  # first: __getattr__ relies on it
        self._capture = capture
        self._name = name
        #: Whether writes are recorded (False once stopped, forked, or when an
        #: fd pipe records this stream's output instead).
        self._live = tee
        self._isatty = isatty
        self._buffer_tee: _BufferTee | None = None
        #: Write here to reach the terminal without being captured.
        self.runbus_passthrough: Any = stream if passthrough is None else passthrough

    def write(self, s: str) -> int:
        """Write ``s`` to the wrapped stream and record it; returns what it returns."""
        n: int = self._stream.write(s)
        if self._live and isinstance(s, str) and not _local.busy:
            self._capture._record_python(self, s)
        return n

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each of ``lines`` (no newlines are added, as ``io`` does)."""
        lines = list(lines)
        self._stream.writelines(lines)
        if self._live and not _local.busy and all(isinstance(x, str) for x in lines):
            self._capture._record_python(self, "".join(lines))

    def flush(self) -> None:
        """Flush the wrapped stream."""
        self._stream.flush()

    def isatty(self) -> bool:
        """Whether the wrapped stream (in fd mode: the real terminal) is a terminal."""
        if self._isatty is not None:
            return self._isatty
        return bool(self._stream.isatty())

    @property
    def buffer(self) -> Any:
        """The wrapped stream's binary buffer; bytes written to it are recorded too."""
        raw = self._stream.buffer
        if not self._live:
            return raw
        tee = self._buffer_tee
        if tee is None or tee._raw is not raw:
            tee = self._buffer_tee = _BufferTee(self, raw)
        return tee

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __repr__(self) -> str:
        return f"<runbus console tee of {self._stream!r}>"


class _BufferTee:
    """``sys.stdout.buffer`` while captured: bytes pass through and are recorded."""

    def __init__(self, owner: ConsoleStream, raw: Any) -> None:
        self._raw = raw
        self._owner = owner
        encoding = getattr(owner._stream, "encoding", None) or "utf-8"
        try:
            factory = codecs.getincrementaldecoder(encoding)
        except LookupError:
            factory = codecs.getincrementaldecoder("utf-8")
        self._decoder = factory("replace")

    def write(self, b: Any) -> Any:
        n = self._raw.write(b)
        owner = self._owner
        if owner._live and not _local.busy:
            try:
                text = self._decoder.decode(bytes(b))
            except Exception:  # not bytes-like: the raw write above accepted it anyway
                return n
            owner._capture._record_python(owner, text)
        return n

    def writelines(self, lines: Iterable[Any]) -> None:
        for b in lines:
            self.write(b)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __repr__(self) -> str:
        return f"<runbus console tee of {self._raw!r}>"


class _TerminalWriter:
    """fd mode's ``runbus_passthrough``: text straight to the real terminal.

    While the pipes are in place it writes to the saved terminal descriptor;
    before and after (and in a forked child) it writes to the original stream,
    whose descriptor is then the terminal again.
    """

    def __init__(self, tee: _FdTee, fd: int, stream: Any) -> None:
        self._tee = tee
        self._fd = fd
        self._stream = stream
        self.encoding: str = getattr(stream, "encoding", None) or "utf-8"

    def write(self, s: str) -> int:
        if self._tee.write_terminal(self._fd, s.encode(self.encoding, "replace")):
            return len(s)
        n: int = self._stream.write(s)
        return n

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# -- fd mode ---------------------------------------------------------------------


class _Pipe:
    """One captured descriptor: the pipe it points at while captured."""

    __slots__ = ("decoder", "fd", "fwd_fd", "name", "read_fd", "saved_fd")

    def __init__(self, name: str, fd: int, saved_fd: int, read_fd: int, fwd_fd: int, enc: str):
        self.name = name
        self.fd = fd
        self.saved_fd: int | None = saved_fd  # the real target, for restoring
        self.read_fd: int | None = read_fd
        self.fwd_fd: int | None = fwd_fd  # the reader's own copy of the real target
        try:
            factory = codecs.getincrementaldecoder(enc)
        except LookupError:
            factory = codecs.getincrementaldecoder("utf-8")
        self.decoder = factory("replace")


class _FdTee:
    """Points fds 1 and 2 at pipes and copies what arrives to the real targets.

    One reader thread serves both pipes, so output keeps its order across
    stdout and stderr as far as the kernel reports it.
    """

    def __init__(self, capture: ConsoleCapture) -> None:
        self._capture = capture
        self._pipes: list[_Pipe] = []
        self._lock = threading.Lock()  # guards saved_fd against stop()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._thread: threading.Thread | None = None
        self._drained = threading.Event()
        self._detached = False  # the reader outlives stop() for other holders
        self._recording = True
        self._stopped = False

    def start(self, wanted: list[tuple[str, int, str]]) -> set[str]:
        """Redirect each ``(name, fd, encoding)``; returns the names redirected."""
        try:
            for name, fd, enc in wanted:
                try:
                    saved = os.dup(fd)  # non-inheritable: children never get it
                except OSError:
                    continue  # the descriptor is closed: nothing to capture
                opened = [saved]
                try:
                    r, w = os.pipe()
                    opened += (r, w)
                    fwd = os.dup(saved)
                    opened.append(fwd)
                    os.dup2(w, fd)  # inheritable: subprocesses write into the pipe
                except BaseException:
                    for x in opened:
                        with contextlib.suppress(OSError):
                            os.close(x)
                    raise
                os.close(w)
                self._pipes.append(_Pipe(name, fd, saved, r, fwd, enc))
            if not self._pipes:
                return set()
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(
                target=self._run, name=f"runbus-console-fd-{self._capture.run_id}", daemon=True
            )
            self._thread.start()
        except BaseException:
            self._undo()
            raise
        return {p.name for p in self._pipes}

    def _undo(self) -> None:
        """Put everything back after a failed start."""
        for p in self._pipes:
            if p.saved_fd is not None:
                with contextlib.suppress(OSError):
                    os.dup2(p.saved_fd, p.fd)
            for fd in (p.saved_fd, p.read_fd, p.fwd_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        self._pipes = []
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = None
        self._thread = None  # so stop() has nothing to wait for

    def write_terminal(self, fd: int, data: bytes) -> bool:
        """Write to the real target of ``fd`` if it is still redirected."""
        if self._capture._pid != os.getpid():
            return False
        with self._lock:
            for p in self._pipes:
                if p.fd == fd and p.saved_fd is not None:
                    try:
                        _write_all(p.saved_fd, data)
                    except OSError:
                        return False
                    return True
        return False

    def stop(self) -> None:
        """Restore the descriptors; return once everything written before is read."""
        if self._thread is None:
            self._stopped = True
            return  # never started (or start failed and undid itself)
        if not self._stopped:
            with self._lock:
                for p in self._pipes:
                    if p.saved_fd is None:
                        continue
                    # Only put back what is still ours: if something else was
                    # pointed at the descriptor since, leave it alone.
                    if p.read_fd is not None and _same_file(p.fd, p.read_fd):
                        with contextlib.suppress(OSError):
                            os.dup2(p.saved_fd, p.fd)
                    with contextlib.suppress(OSError):
                        os.close(p.saved_fd)
                    p.saved_fd = None
            self._stopped = True
            if self._wake_w is not None:
                # Tell the reader the descriptors are back: what is in the pipes
                # now is all that was written before stop().
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")
        if not self._drained.wait(_DRAIN_WAIT):
            log.warning("runbus: the console reader did not drain within %.0f s", _DRAIN_WAIT)
            return
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.close(self._wake_w)
            self._wake_w = None
        thread = self._thread
        if thread is not None and not self._detached:
            thread.join()

    # -- the reader thread -------------------------------------------------------

    def _run(self) -> None:
        _local.busy = True
        sel = selectors.DefaultSelector()
        try:
            for p in self._pipes:
                assert p.read_fd is not None
                sel.register(p.read_fd, selectors.EVENT_READ, p)
            assert self._wake_r is not None
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            while sel.get_map():
                for key, _ in sel.select():
                    pipe = key.data
                    if pipe is None:
                        self._drain_all(sel)
                    elif pipe.read_fd is not None:
                        self._pump(pipe, sel)
        except Exception:  # never let a reader failure take the terminal with it
            log.exception("runbus: the console capture reader failed")
        finally:
            self._recording = False
            self._drained.set()
            sel.close()
            for p in self._pipes:
                for attr in ("read_fd", "fwd_fd"):
                    fd = getattr(p, attr)
                    if fd is not None:
                        setattr(p, attr, None)
                        with contextlib.suppress(OSError):
                            os.close(fd)
            if self._wake_r is not None:
                with contextlib.suppress(OSError):
                    os.close(self._wake_r)
                self._wake_r = None

    def _drain_all(self, sel: selectors.BaseSelector) -> None:
        """At stop: read what is in the pipes without waiting for more."""
        assert self._wake_r is not None
        sel.unregister(self._wake_r)
        for p in self._pipes:
            if p.read_fd is None:
                continue
            os.set_blocking(p.read_fd, False)
            got = 0
            while p.read_fd is not None and got < _DRAIN_LIMIT:
                n = self._pump(p, sel)
                if n <= 0:
                    break
                got += n
        self._recording = False
        # A pipe still open here has another writer (a child that outlives
        # stop()): keep copying it to the terminal, unrecorded, until it ends.
        self._detached = any(p.read_fd is not None for p in self._pipes)
        self._drained.set()

    def _pump(self, p: _Pipe, sel: selectors.BaseSelector) -> int:
        """Read once; forward and record. Returns bytes read, 0 at end, -1 if none now."""
        assert p.read_fd is not None
        try:
            data = os.read(p.read_fd, _READ_SIZE)
        except BlockingIOError:
            return -1
        except OSError:
            data = b""
        if not data:
            sel.unregister(p.read_fd)
            with contextlib.suppress(OSError):
                os.close(p.read_fd)
            p.read_fd = None
            if self._recording:
                self._capture._record_fd(p.name, p.decoder.decode(b"", final=True))
            return 0
        if p.fwd_fd is not None:
            try:
                _write_all(p.fwd_fd, data)
            except OSError:
                # The terminal went away; keep reading so writers never block.
                with contextlib.suppress(OSError):
                    os.close(p.fwd_fd)
                p.fwd_fd = None
        if self._recording:
            self._capture._record_fd(p.name, p.decoder.decode(data))
        return len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            # The target is non-blocking (a shared terminal can be): wait for it.
            select.select([], [fd], [])
            continue
        view = view[n:]


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


_libc: Any = None


def _flush_c_stdio() -> None:
    """``fflush(NULL)``: C-level buffers go out before the descriptors change."""
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None)
        _libc.fflush(None)
    except Exception:  # no C library to reach (or no fflush): nothing buffered there
        pass


# -- the capture ------------------------------------------------------------------

_owner: ConsoleCapture | None = None
_owner_lock = threading.Lock()


class ConsoleCapture:
    """Tees this process's stdout and stderr into a run as ``Output`` events.

    ``put`` receives ``Output(run_id, 0, ts, "stdout" | "stderr", line)`` for
    each completed line (``line`` ends with ``"\\n"``); it is called from a
    thread of the capture (and from :meth:`stop`), never while a lock of the
    capture is held, and may block while the pipeline catches up.

    Raises ``ValueError`` for a ``mode`` other than ``"wrap"``/``"fd"`` or a
    ``max_line`` below 1.
    """

    def __init__(
        self,
        run_id: str,
        put: Callable[[Item], None],
        *,
        mode: CaptureMode = "wrap",
        max_line: int = 16384,
    ) -> None:
        if mode not in ("wrap", "fd"):
            raise ValueError(f"console capture mode must be 'wrap' or 'fd', not {mode!r}")
        if isinstance(max_line, bool) or not isinstance(max_line, int) or max_line < 1:
            raise ValueError(f"console max_line must be a positive integer, not {max_line!r}")
        self.run_id = run_id
        self.mode: CaptureMode = mode
        self.max_line = max_line
        self._put = put
        self._pid = os.getpid()
        # Reentrant: a signal handler that prints can run while this thread
        # is inside the capture.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Output] = deque()
        self._pending: dict[tuple[str, object], _Pending] = {}
        self._compact_at = _compact_at(max_line)
        self._emitter_idle = False
        self._open = False  # lines are being recorded
        self._closing = False  # stop() has taken over the queue
        self._emit_lock = threading.Lock()  # held by whoever is calling put
        self._emitter: threading.Thread | None = None
        self._streams: dict[str, tuple[ConsoleStream, Any]] = {}
        #: Logging handlers pointed at the stand-ins: (handler, (stand-in, original)).
        self._handlers: list[tuple[logging.StreamHandler[Any], tuple[Any, Any]]] = []
        self._fd: _FdTee | None = None
        self._state: Literal["new", "live", "stopped", "forked"] = "new"
        self._stop_lock = threading.Lock()
        self._put_failed = False

    def __repr__(self) -> str:
        return f"<ConsoleCapture run={self.run_id} mode={self.mode} {self._state}>"

    @property
    def active(self) -> bool:
        """Whether this capture is recording now."""
        return self._state == "live"

    # -- start -------------------------------------------------------------------

    def start(self) -> bool:
        """Install the tee. False if another capture owns the console (or this
        one was already stopped, or installing failed; failures are logged)."""
        global _owner
        with _owner_lock:
            if self._state != "new":
                return self._state == "live"
            if _owner is not None:
                return False
            _owner = self
            self._state = "live"
        try:
            self._install()
        except Exception as exc:
            log.warning("runbus: console capture could not start (%s); the run goes on", exc)
            with contextlib.suppress(Exception):
                self._restore_streams()
            if self._fd is not None:
                with contextlib.suppress(Exception):
                    self._fd.stop()
            self._close_emitter()
            self._release()
            return False
        return True

    def _install(self) -> None:
        streams = {"stdout": sys.stdout, "stderr": sys.stderr}
        numbers = {"stdout": 1, "stderr": 2}
        ttys = {name: _isatty(s) for name, s in streams.items()}
        self._open = True
        self._emitter = threading.Thread(
            target=self._emit_loop, name=f"runbus-console-{self.run_id}", daemon=True
        )
        self._emitter.start()
        by_fd: set[str] = set()
        if self.mode == "fd" and os.name == "posix":
            for s in streams.values():
                _flush(s)  # what was written before start() is not the run's
            _flush_c_stdio()
            self._fd = _FdTee(self)
            by_fd = self._fd.start(
                [(name, numbers[name], _encoding(s)) for name, s in streams.items()]
            )
        elif self.mode == "fd":
            log.warning("runbus: console mode 'fd' needs a POSIX system; using 'wrap'")
        for name, stream in streams.items():
            if stream is None:
                continue  # no console at all (pythonw): nothing to wrap
            if name in by_fd and _fileno(stream) == numbers[name]:
                # The pipe records this stream; the stand-in keeps isatty()
                # truthful and offers a way around the pipe.
                assert self._fd is not None
                wrapper = ConsoleStream(
                    self,
                    name,
                    stream,
                    tee=False,
                    isatty=ttys[name],
                    passthrough=_TerminalWriter(self._fd, numbers[name], stream),
                )
            else:
                wrapper = ConsoleStream(self, name, stream, tee=True)
            self._streams[name] = (wrapper, stream)
            setattr(sys, name, wrapper)
        self._handlers = _retarget_handlers(
            {id(orig): wrapper for wrapper, orig in self._streams.values() if wrapper._live}
        )

    # -- recording (any thread) ----------------------------------------------------

    def _record_python(self, wrapper: ConsoleStream, text: str) -> None:
        """Record text a stand-in stream wrote; never raises into the writer."""
        # This runs for every write (print() makes several): the common
        # no-newline case is inlined, and try/except costs less than
        # contextlib.suppress.
        try:
            key = (wrapper._name, _get_ident())
            with self._lock:
                if not (wrapper._live and self._open and text):
                    return
                if "\n" in text:
                    self._record_locked(key, text)
                    return
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = _Pending()
                pending.parts.append(text)
                pending.size += len(text)
                if pending.size > self._compact_at:
                    pending.compact(self.max_line)
        except Exception:  # recording is best effort; the write itself went through
            pass

    def _record_fd(self, name: str, text: str) -> None:
        with self._lock:
            if self._open and text:
                self._record_locked((name, "fd"), text)

    def _record_locked(self, key: tuple[str, object], text: str) -> None:
        max_line = self.max_line
        stream = key[0]
        pending = self._pending.get(key)
        if "\n" not in text:
            if pending is None:
                pending = self._pending[key] = _Pending()
            pending.add(text, max_line)
            return
        pieces = text.split("\n")
        tail = pieces.pop()
        if pending is not None:
            del self._pending[key]
            lines = [pending.finish(pieces[0], max_line)]
        else:
            lines = [render_line(pieces[0], max_line)]
        lines.extend(render_line(p, max_line) for p in pieces[1:])
        if tail:
            pending = self._pending[key] = _Pending()
            pending.add(tail, max_line)
        ts = time.time()
        run_id, queue = self.run_id, self._queue
        for line in lines:
            queue.append(Output(run_id, 0, ts, stream, line + "\n"))
        if self._emitter_idle:  # a notify costs more than a print: only when needed
            self._cond.notify()

    # -- hand-off to the run ----------------------------------------------------------

    def _emit_loop(self) -> None:
        """Hand queued lines to ``put`` in order; only this thread waits for room."""
        _local.busy = True
        cond, queue = self._cond, self._queue
        while True:
            with cond:
                while not queue and not self._closing:
                    self._emitter_idle = True
                    cond.wait()
                    self._emitter_idle = False
                if self._closing:
                    return
            # Let a burst of output collect so that one wake-up hands over many
            # lines (as the run's own intake lingers); stop() never waits for this.
            time.sleep(_LINGER)
            with self._emit_lock:
                while True:
                    with cond:
                        if not queue or self._closing:
                            break
                        item = queue.popleft()
                    self._safe_put(item)

    def _safe_put(self, item: Output) -> None:
        try:
            self._put(item)
        except Exception:
            if not self._put_failed:  # once: a broken run must not flood stderr
                self._put_failed = True
                log.warning(
                    "runbus: console output of run %s could not be handed over", self.run_id
                )

    def _close_emitter(self) -> None:
        """Stop the hand-off thread and hand over what is left from this thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        # The hand-off thread finishes its current put at once unless the
        # pipeline is far behind, or waits on this very thread (stop() called
        # on the pipeline's own loop). ``put`` appends before it waits, so
        # once the wait is over that item is already ahead of the rest.
        got = self._emit_lock.acquire(timeout=_HANDOVER_WAIT)
        was_busy = _local.busy
        _local.busy = True
        try:
            with self._cond:
                items = list(self._queue)
                self._queue.clear()
            for item in items:
                self._safe_put(item)
        finally:
            _local.busy = was_busy
            if got:
                self._emit_lock.release()
        emitter = self._emitter
        if got and emitter is not None and emitter is not threading.current_thread():
            emitter.join()

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Restore the console and hand over every line written before.

        Idempotent and safe from ``atexit``, ``finally`` blocks and signal
        handlers (a call made while another is running returns at once; a call
        interrupted part way is finished by the next one). A pending partial
        line is emitted as a line of its own. ``sys.stdout``/``sys.stderr``
        are restored to what they were at start if the capture's stand-ins are
        still installed there; a replacement made since is left alone.
        """
        if os.getpid() != self._pid:
            self._forked()
            return
        if not self._stop_lock.acquire(blocking=False):
            return  # a stop is already running (maybe this very thread, interrupted)
        try:
            if self._state != "live":
                return
            self._restore_streams()
            if self._fd is not None:
                # Buffered text belongs to the run: push it into the pipes first.
                for _, stream in self._streams.values():
                    _flush(stream)
                _flush_c_stdio()
                self._fd.stop()
            with self._lock:
                for wrapper, _ in self._streams.values():
                    wrapper._live = False
                self._open = False
                pending, self._pending = self._pending, {}
                ts = time.time()
                for (stream, _), part in pending.items():
                    line = part.finish("", self.max_line)
                    if line:
                        self._queue.append(Output(self.run_id, 0, ts, stream, line + "\n"))
            self._close_emitter()
            self._state = "stopped"
            self._release()
        finally:
            self._stop_lock.release()

    def _restore_streams(self, *, handlers_too: bool = True) -> None:
        for name, (wrapper, original) in self._streams.items():
            if getattr(sys, name, None) is wrapper:
                setattr(sys, name, original)
        if not handlers_too:
            return
        handlers, self._handlers = self._handlers, []
        for handler, original in handlers:
            if handler.stream is original[0]:
                with contextlib.suppress(Exception):
                    handler.setStream(original[1])

    def _release(self) -> None:
        global _owner
        with _owner_lock:
            if _owner is self:
                _owner = None
        if self._state == "live":
            self._state = "stopped"

    def _forked(self) -> None:
        """In a forked child: stop recording, write straight through.

        Takes no locks (another thread of the parent may have held them at the
        fork). In fd mode the child's descriptors stay on the parent's pipes,
        so the parent records the child's output as it does a subprocess's.
        """
        if self._state != "live":
            return
        self._state = "forked"
        self._open = False
        for wrapper, _ in self._streams.values():
            wrapper._live = False
        # Handlers keep the stand-ins, which now pass straight through:
        # setStream() would take a handler lock another thread may have held.
        self._restore_streams(handlers_too=False)


def _after_fork_in_child() -> None:
    global _owner, _owner_lock
    _owner_lock = threading.Lock()  # another thread may have held it at fork
    capture, _owner = _owner, None
    if capture is not None:
        capture._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _stop_at_exit() -> None:
    # The run's own exit hook normally stops the capture; this covers runs the
    # program never finished (an async run whose loop is gone), so fd mode
    # never leaves the last output of the process in a pipe nobody reads.
    capture = _owner
    if capture is not None:
        with contextlib.suppress(Exception):
            capture.stop()


atexit.register(_stop_at_exit)


def _retarget_handlers(
    wrappers: dict[int, ConsoleStream],
) -> list[tuple[logging.StreamHandler[Any], tuple[Any, Any]]]:
    """Point logging handlers made before the capture at the stand-ins.

    A ``StreamHandler`` keeps the stream it was given, usually ``sys.stderr``
    as it was when ``logging.basicConfig()`` ran or a library (transformers,
    say) set up its logger at import: long before ``init()``. Without this
    their records would bypass the capture.
    """
    if not wrappers:
        return []
    loggers: list[Any] = [logging.getLogger()]
    loggers += list(logging.Logger.manager.loggerDict.values())
    moved: list[tuple[logging.StreamHandler[Any], tuple[Any, Any]]] = []
    seen: set[int] = set()
    for lg in loggers:
        for handler in list(getattr(lg, "handlers", ())):
            if id(handler) in seen or not isinstance(handler, logging.StreamHandler):
                continue
            seen.add(id(handler))
            wrapper = wrappers.get(id(handler.stream))
            if wrapper is None or handler.stream is not wrapper._stream:
                continue
            original = handler.stream
            with contextlib.suppress(Exception):
                handler.setStream(wrapper)
                moved.append((handler, (wrapper, original)))
    return moved


def owner() -> ConsoleCapture | None:
    """The capture that owns this process's console now, if any."""
    return _owner


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


def _fileno(stream: Any) -> int | None:
    try:
        n = stream.fileno()
    except Exception:
        return None
    return n if isinstance(n, int) else None


def _encoding(stream: Any) -> str:
    enc = getattr(stream, "encoding", None)
    return enc if isinstance(enc, str) and enc else "utf-8"


def _flush(stream: Any) -> None:
    with contextlib.suppress(Exception):
        if stream is not None:
            stream.flush()
