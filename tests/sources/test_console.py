"""Console capture: the terminal sees what it saw before, the run gets the lines.

Most cases drive :class:`ConsoleCapture` directly with fake terminals in
``sys.stdout``/``sys.stderr`` and a list as ``put``. File-descriptor mode
replaces fds 1 and 2, which pytest's own capture also uses, so those cases run
in a child Python whose real stdout and stderr the test reads. The end-to-end
cases go through ``pipeline.init`` and ``read_run`` like a user would.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pipeline
from pipeline import events as ev
from pipeline.testing import MemorySink
from sources import console
from sources.console import ConsoleCapture, ConsoleStream, render_line

SRC = Path(next(iter(pipeline.__path__))).parent
CHILD_TIMEOUT = 120
# Settings for end-to-end runs: only the console source, no terminal sink.
E2E = {"quiet": True, "system": False, "git": False, "requirements": False, "metadata": False}


class Terminal(io.TextIOWrapper):
    """A fake terminal: a line-buffered text stream over bytes that is a tty."""

    def __init__(self, fileno: int = 41) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", line_buffering=True)
        self.fake_fileno = fileno

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fake_fileno

    def text(self) -> str:
        self.flush()
        raw = self.buffer
        assert isinstance(raw, io.BytesIO)
        return raw.getvalue().decode("utf-8")


class Terminals:
    """The fake stdout and stderr of one test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.out = Terminal(41)
        self.err = Terminal(42)
        self._monkeypatch = monkeypatch

    def install(self) -> None:
        """Put them in ``sys.stdout``/``sys.stderr`` (undone after the test).

        Called from the test body: pytest swaps its own capture streams in
        between fixture setup and the test call.
        """
        self._monkeypatch.setattr(sys, "stdout", self.out)
        self._monkeypatch.setattr(sys, "stderr", self.err)


@pytest.fixture
def term(monkeypatch: pytest.MonkeyPatch) -> Terminals:
    """Fake terminals for ``sys.stdout`` and ``sys.stderr``."""
    return Terminals(monkeypatch)


Made = tuple[ConsoleCapture, list[ev.Item]]


@pytest.fixture
def capture(term: Terminals) -> Iterator[Callable[..., Made]]:
    """Make captures that put into a list; any left live are stopped afterwards."""
    made: list[ConsoleCapture] = []

    def make(mode: str = "wrap", max_line: int = 1000, run_id: str = "r1") -> Made:
        if not made:
            term.install()
        got: list[ev.Item] = []
        cap = ConsoleCapture(run_id, got.append, mode=mode, max_line=max_line)  # type: ignore[arg-type]
        made.append(cap)
        return cap, got

    yield make
    for cap in made:
        cap.stop()
    assert console.owner() is None


def current_streams() -> tuple[object, object]:
    """``sys.stdout`` and ``sys.stderr`` now (typed loosely: a test narrowed them)."""
    return sys.stdout, sys.stderr


def texts(got: list[ev.Item], stream: str | None = None) -> list[str]:
    """The text of each ``Output`` (of one stream)."""
    out = []
    for e in got:
        assert isinstance(e, ev.Output)
        if stream is None or e.stream == stream:
            out.append(e.text)
    return out


# -- lines and the terminal ------------------------------------------------------


def test_each_completed_line_is_one_event_and_the_terminal_is_unchanged(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    assert cap.start()
    print("hello")
    print("a", "b", sep="-", end="!\n")
    assert sys.stdout.write("par") == 3
    sys.stdout.write("tial ")
    sys.stdout.write("line\nsecond\nthird")
    sys.stdout.writelines(["x\n", "y\n"])
    cap.stop()
    assert term.out.text() == "hello\na-b!\npartial line\nsecond\nthirdx\ny\n"
    assert texts(got) == ["hello\n", "a-b!\n", "partial line\n", "second\n", "thirdx\n", "y\n"]
    for e in got:
        assert isinstance(e, ev.Output)
        assert (e.run_id, e.seq, e.stream, e.kind) == ("r1", 0, "stdout", "output")
        assert e.ts > 0


def test_stderr_is_teed_as_its_own_stream(capture: Callable[..., Made], term: Terminals) -> None:
    cap, got = capture()
    assert cap.start()
    print("out 1")
    print("err 1", file=sys.stderr)
    sys.stderr.write("err 2\n")
    print("out 2")
    cap.stop()
    assert term.out.text() == "out 1\nout 2\n"
    assert term.err.text() == "err 1\nerr 2\n"
    assert [(e.stream, e.text) for e in got if isinstance(e, ev.Output)] == [
        ("stdout", "out 1\n"),
        ("stderr", "err 1\n"),
        ("stderr", "err 2\n"),
        ("stdout", "out 2\n"),
    ]


def test_stop_emits_a_pending_partial_line_and_restores_the_streams(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    assert cap.start()
    assert isinstance(sys.stdout, ConsoleStream)
    assert isinstance(sys.stderr, ConsoleStream)
    sys.stdout.write("no newline yet")
    sys.stderr.write("\r 50%|#####     |")  # a progress bar that never finished
    cap.stop()
    assert current_streams() == (term.out, term.err)
    assert sorted((e.stream, e.text) for e in got if isinstance(e, ev.Output)) == [
        ("stderr", " 50%|#####     |\n"),
        ("stdout", "no newline yet\n"),
    ]
    cap.stop()  # idempotent
    console._stop_at_exit()  # what atexit does: nothing left to stop
    print("after")
    assert len(got) == 2
    assert term.out.text() == "no newline yetafter\n"


def test_carriage_return_progress_bars_collapse_to_their_final_state(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    assert cap.start()
    bar = ["\r  0%|          | 0/4", "\r 50%|#####     | 2/4", "\r100%|##########| 4/4"]
    for state in bar:  # tqdm writes one state per call and flushes
        sys.stderr.write(state)
        sys.stderr.flush()
    sys.stderr.write("\n")
    sys.stdout.write("windows line\r\nnext\r\n")
    sys.stdout.write("abc\r")  # a "\r\n" split across writes is still a newline
    sys.stdout.write("\n")
    # tqdm(leave=False) blanks its line at the end; what follows replaces it.
    sys.stdout.write("\r 10%|#  |\r          \rdone\n")
    sys.stdout.write("long line\rshort\n")  # an overwrite keeps what it did not cover
    cap.stop()
    assert term.err.text() == "".join(bar) + "\n"
    assert texts(got, "stderr") == ["100%|##########| 4/4\n"]
    assert texts(got, "stdout") == ["windows line\n", "next\n", "abc\n", "done\n", "shortline\n"]


def test_a_real_tqdm_bar_leaves_one_line(capture: Callable[..., Made], term: Terminals) -> None:
    tqdm = pytest.importorskip("tqdm")
    cap, got = capture()
    assert cap.start()
    for _ in tqdm.tqdm(range(50), file=sys.stderr, mininterval=0, ascii=True):
        pass
    cap.stop()
    (line,) = texts(got, "stderr")
    assert line.startswith("100%|##########| 50/50")
    assert term.err.text().count("\r") > 1


def test_long_lines_are_cut_with_a_note(capture: Callable[..., Made], term: Terminals) -> None:
    cap, got = capture(max_line=10)
    assert cap.start()
    print("x" * 25)
    print("short")
    for _ in range(200):  # a line far past the limit, in many writes
        sys.stdout.write("y" * 1000)
    sys.stdout.write("\n")
    cap.stop()
    assert term.out.text().splitlines()[0] == "x" * 25  # the terminal gets all of it
    assert texts(got) == [
        "xxxxxxxxxx [runbus: line cut, 15 more characters]\n",
        "short\n",
        "yyyyyyyyyy [runbus: line cut, 199990 more characters]\n",
    ]


def test_an_endless_progress_bar_keeps_only_its_latest_state(
    capture: Callable[..., Made],
) -> None:
    cap, got = capture(max_line=100)
    assert cap.start()
    for i in range(1, 20001):
        sys.stderr.write(f"\rstep {i}/20000")
    # Held as a replayed line, not as every update written so far.
    held = [p for key, p in cap._pending.items() if key[0] == "stderr"]
    assert sum(p.size for p in held) < 70_000
    sys.stderr.write("\n")
    cap.stop()
    assert texts(got) == ["step 20000/20000\n"]


def test_colours_are_kept_and_cursor_movement_is_applied_or_dropped(
    capture: Callable[..., Made],
) -> None:
    cap, got = capture()
    assert cap.start()
    coloured = "\x1b[1;31mERROR\x1b[0m: \x1b[32mgreen\x1b[0m"
    print(coloured)
    sys.stdout.write("\x1b[3")  # an escape sequence split across writes
    sys.stdout.write("4mblue\x1b[0m\n")
    print("\x1b]0;window title\x07visible")
    print("\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\ text")
    print("\x1b[Aup\x1b[2Bdown")
    print("old text\r\x1b[Knew")  # pip/rich style: return, erase, rewrite
    print("spin|\b/\b-\b\\")
    print("\x1b[32m 10%\x1b[0m\r\x1b[32m100%\x1b[0m")
    cap.stop()
    assert texts(got) == [
        coloured + "\n",
        "\x1b[34mblue\x1b[0m\n",
        "visible\n",
        "link text\n",
        "updown\n",
        "new\n",
        "spin\\\n",
        "\x1b[32m100%\x1b[0m\n",
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("plain", "plain"),
        ("", ""),
        ("tab\there", "tab\there"),
        ("abc\r", "abc"),
        ("abcdef\rXY", "XYcdef"),
        ("abcdef\r\x1b[2KXY", "XY"),
        ("abcdef\x1b[3D\x1b[0K!", "abc!"),
        ("ab\x1b[6Gx", "ab   x"),
        (
            "\x1b[31m" + "r" * 12,
            "\x1b[31m" + "r" * 8 + "\x1b[0m [runbus: line cut, 4 more characters]",
        ),
        ("é" * 9, "é" * 8 + " [runbus: line cut, 1 more characters]"),
    ],
)
def test_render_line(text: str, line: str) -> None:
    assert render_line(text, 8) == line


# -- threads ----------------------------------------------------------------------


def test_prints_from_many_threads_lose_nothing_and_never_tear(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    assert cap.start()
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for i in range(1000):
            # print() writes the text and the newline in two calls: another
            # thread's text can land between them on the terminal, never in a line.
            print(f"thread {t} line {i}", "payload " * 3)
            if i % 100 == 0:
                sys.stderr.write(f"thread {t} ")
                sys.stderr.write(f"err {i}\n")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    cap.stop()
    out = texts(got, "stdout")
    assert len(out) == 8000
    want = {f"thread {t} line {i} {'payload ' * 3}\n" for t in range(8) for i in range(1000)}
    assert set(out) == want
    for t in range(8):  # each thread's lines stay in its order
        mine = [s for s in out if s.startswith(f"thread {t} ")]
        assert mine == [f"thread {t} line {i} {'payload ' * 3}\n" for i in range(1000)]
    assert sorted(texts(got, "stderr")) == sorted(
        f"thread {t} err {i}\n" for t in range(8) for i in range(0, 1000, 100)
    )
    # The terminal got every character (lines may interleave there, as before).
    assert len(term.out.text()) == sum(len(s) for s in out)


# -- the stand-ins ----------------------------------------------------------------


def test_the_stand_in_answers_like_the_wrapped_stream(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    assert cap.start()
    out = sys.stdout
    assert isinstance(out, ConsoleStream)
    assert out.isatty() is True
    assert out.fileno() == 41
    assert out.encoding == "utf-8"
    assert out.line_buffering is True
    assert out.runbus_passthrough is term.out
    assert sys.stderr.fileno() == 42
    out.buffer.write(b"bytes \xc3")  # a character split across writes
    out.buffer.write(b"\xa9 line\n")
    out.runbus_passthrough.write("straight to the terminal\n")
    out.flush()
    cap.stop()
    assert term.out.text() == "bytes é line\nstraight to the terminal\n"
    assert texts(got) == ["bytes é line\n"]


def test_logging_handlers_made_before_the_capture_are_captured(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    logger = logging.getLogger("test_console.early")
    logger.propagate = False
    handler = logging.StreamHandler()  # holds sys.stderr as it is now
    file_handler = logging.StreamHandler(io.StringIO())  # not a console stream
    logger.addHandler(handler)
    logger.addHandler(file_handler)
    try:
        assert cap.start()
        logger.warning("from a library's logger")
        cap.stop()
        assert handler.stream is term.err, "put back at stop"
        logger.warning("after the run")
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(file_handler)
    assert texts(got) == ["from a library's logger\n"]
    assert term.err.text() == "from a library's logger\nafter the run\n"


def test_errors_of_the_wrapped_stream_reach_the_caller_as_before(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    assert cap.start()
    with pytest.raises(TypeError):
        sys.stdout.write(b"bytes to a text stream")  # type: ignore[arg-type]
    term.out.close()
    with pytest.raises(ValueError, match="closed"):
        print("to a closed stream")
    cap.stop()
    assert got == []


def test_a_failing_put_never_reaches_the_writer(
    term: Terminals, caplog: pytest.LogCaptureFixture
) -> None:
    def put(item: ev.Item) -> None:
        raise RuntimeError("pipeline gone")

    term.install()
    cap = ConsoleCapture("r1", put, mode="wrap", max_line=100)
    assert cap.start()
    try:
        for i in range(3):
            print(f"line {i}")
    finally:
        cap.stop()
    assert term.out.text() == "line 0\nline 1\nline 2\n"
    assert sum("could not be handed over" in r.message for r in caplog.records) == 1


def test_output_made_while_handing_over_is_not_captured_again(term: Terminals) -> None:
    got: list[ev.Item] = []

    def put(item: ev.Item) -> None:
        # A put that prints (a warning, say) must not feed itself forever.
        print("[put]", file=sys.stderr)
        got.append(item)

    term.install()
    cap = ConsoleCapture("r1", put, mode="wrap", max_line=100)
    assert cap.start()
    try:
        print("one")
        print("two")
    finally:
        cap.stop()
    assert texts(got) == ["one\n", "two\n"]
    assert term.err.text() == "[put]\n[put]\n"


# -- ownership and restoring --------------------------------------------------------


def test_one_capture_owns_the_console(capture: Callable[..., Made], term: Terminals) -> None:
    first, got1 = capture(run_id="first")
    second, got2 = capture(run_id="second")
    assert first.start()
    assert console.owner() is first
    assert not second.start()
    second.stop()  # a capture that never started stops as a no-op
    print("still the first's")
    assert console.owner() is first
    first.stop()
    assert console.owner() is None
    assert texts(got1) == ["still the first's\n"]
    assert got2 == []
    assert not first.start()  # a capture is used once
    assert sys.stdout is term.out


def test_a_replacement_made_before_start_is_wrapped(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    redirected = io.StringIO()
    sys.stdout = redirected
    assert cap.start()
    print("into the replacement")
    cap.stop()
    assert sys.stdout is redirected
    assert redirected.getvalue() == "into the replacement\n"
    assert texts(got) == ["into the replacement\n"]


def test_a_replacement_made_during_the_capture_is_left_alone(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    assert cap.start()
    ours = sys.stdout
    user = io.StringIO()
    sys.stdout = user  # e.g. contextlib.redirect_stdout that is still open
    print("to the user's stream")
    ours.write("via a kept reference\n")
    cap.stop()
    assert sys.stdout is user, "the user's replacement stays"
    assert sys.stderr is term.err, "ours on top is put back"
    ours.write("after stop: straight through\n")
    assert texts(got) == ["via a kept reference\n"]
    assert term.out.text() == "via a kept reference\nafter stop: straight through\n"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_straight_through(
    capture: Callable[..., Made], term: Terminals
) -> None:
    cap, got = capture()
    assert cap.start()
    print("parent before")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees through the pipe, then leave
        try:
            before = len(got)
            print("child line")
            sys.stdout.flush()
            report = {
                "restored": sys.stdout is term.out,
                "recorded": len(got) - before,
                "owner": console.owner() is None,
                "terminal": term.out.text().endswith("child line\n"),
            }
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = json.loads(f.read())
    os.waitpid(pid, 0)
    print("parent after")
    cap.stop()
    assert report == {"restored": True, "recorded": 0, "owner": True, "terminal": True}
    assert texts(got) == ["parent before\n", "parent after\n"]


def test_a_capture_that_cannot_start_leaves_everything_as_it_was(
    capture: Callable[..., Made],
    term: Terminals,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap, got = capture(mode="fd")

    def no_pipes() -> tuple[int, int]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "pipe", no_pipes)
    fd1 = os.fstat(1)
    open_fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    assert not cap.start()
    assert "could not start" in caplog.text
    assert current_streams() == (term.out, term.err)
    assert console.owner() is None
    after = os.fstat(1)
    assert (after.st_dev, after.st_ino) == (fd1.st_dev, fd1.st_ino)
    if open_fds is not None:
        assert len(os.listdir("/proc/self/fd")) == open_fds, "no descriptor leaked"
    print("not recorded")
    assert got == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="'wrap' or 'fd'"):
        ConsoleCapture("r", print, mode="pty", max_line=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_line"):
        ConsoleCapture("r", print, mode="wrap", max_line=0)


# -- file-descriptor mode (in a child process) ------------------------------------------


def _child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python; its real stdout/stderr come back as text.

    Decoded here rather than with ``text=True``, which would turn the ``\\r``
    of progress bars into newlines.
    """
    env = dict(os.environ, PYTHONPATH=str(SRC), RUNBUS_QUIET="1")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def test_fd_mode_catches_subprocesses_and_raw_writes_and_the_terminal_still_gets_them(
    tmp_path: Path,
) -> None:
    report = tmp_path / "events.json"
    done = _child(
        """
        import json, os, subprocess, sys
        from sources.console import ConsoleCapture

        got = []
        print("before", flush=True)
        fd1 = os.fstat(1)
        cap = ConsoleCapture("r1", got.append, mode="fd", max_line=100)
        assert cap.start()
        print("python line", flush=True)
        print("python err", file=sys.stderr, flush=True)
        subprocess.run(["echo", "from echo"], check=True)
        subprocess.run(["sh", "-c", "echo sh err >&2"], check=True)
        os.write(1, b"raw write\\n")
        os.write(1, b"\\r 50%\\r100%\\n")
        sys.stdout.runbus_passthrough.write("around the pipe\\n")
        sys.stdout.runbus_passthrough.flush()
        print("buffered, flushed by stop")  # stdout is a pipe: block-buffered
        cap.stop()
        after = os.fstat(1)
        print("after", flush=True)
        json.dump(
            {
                "events": [[e.stream, e.text] for e in got],
                "restored": (after.st_dev, after.st_ino) == (fd1.st_dev, fd1.st_ino),
                "stream_restored": sys.stdout is sys.__stdout__,
            },
            open(sys.argv[1], "w"),
        )
        """,
        str(report),
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    assert data["restored"]
    assert data["stream_restored"]
    out = done.stdout.split("\n")
    assert out.pop() == ""
    # The write around the pipe may overtake output still in it; the rest keeps its order.
    assert "around the pipe" in out
    assert [line for line in out if line != "around the pipe"] == [
        "before",
        "python line",
        "from echo",
        "raw write",
        "\r 50%\r100%",
        "buffered, flushed by stop",
        "after",
    ]
    assert done.stderr.splitlines() == ["python err", "sh err"]
    events = data["events"]
    assert [t for s, t in events if s == "stdout"] == [
        "python line\n",
        "from echo\n",
        "raw write\n",
        "100%\n",
        "buffered, flushed by stop\n",
    ]
    assert [t for s, t in events if s == "stderr"] == ["python err\n", "sh err\n"]


def test_fd_mode_stop_returns_while_a_child_still_holds_the_pipe(tmp_path: Path) -> None:
    report = tmp_path / "events.json"
    done = _child(
        """
        import json, subprocess, sys, threading
        from sources.console import ConsoleCapture

        got, early = [], threading.Event()

        def put(e):
            got.append(e)
            if e.text == "early\\n":
                early.set()

        cap = ConsoleCapture("r1", put, mode="fd", max_line=100)
        assert cap.start()
        # A child that outlives the capture, holding the pipe as its stdout.
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; print('early', flush=True); "
             "sys.stdin.read(); print('late', flush=True)"],
            stdin=subprocess.PIPE,
        )
        early.wait()
        print("mine", flush=True)
        cap.stop()  # returns although the child still holds the pipe open
        child.stdin.close()
        child.wait()
        cap._fd._thread.join()  # the reader copies the rest until the child is gone
        json.dump([[e.stream, e.text] for e in got], open(sys.argv[1], "w"))
        """,
        str(report),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["early", "mine", "late"]
    events = json.loads(report.read_text())
    assert sorted(t for _, t in events) == ["early\n", "mine\n"], "late came after stop()"


def test_fd_mode_records_a_forked_child_like_a_subprocess(tmp_path: Path) -> None:
    report = tmp_path / "events.json"
    done = _child(
        """
        import json, os, sys
        from sources import console
        from sources.console import ConsoleCapture

        got = []
        cap = ConsoleCapture("r1", got.append, mode="fd", max_line=100)
        assert cap.start()
        pid = os.fork()
        if pid == 0:
            # The child records nothing itself; its fd 1 is the parent's pipe.
            ok = console.owner() is None and sys.stdout is sys.__stdout__
            print("from the forked child", ok, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("from the parent", flush=True)
        cap.stop()
        json.dump([[e.stream, e.text] for e in got], open(sys.argv[1], "w"))
        """,
        str(report),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the forked child True\nfrom the parent\n"
    assert json.loads(report.read_text()) == [
        ["stdout", "from the forked child True\n"],
        ["stdout", "from the parent\n"],
    ]


# -- end to end ---------------------------------------------------------------------


def _unmarked(output: str) -> list[str]:
    """output.log's lines without the disk sink's stderr marker."""
    return [re.sub(r"^\[stderr\] ", "", line) for line in output.splitlines()]


def test_a_run_records_its_console_output(tmp_path: Path) -> None:
    mem = MemorySink()
    run = pipeline.init(project="p", dir=tmp_path, sinks=[mem], settings={**E2E, "console": "wrap"})
    assert isinstance(sys.stdout, ConsoleStream), "init() starts the console capture"
    print("hello from the run")
    for state in ("\r  0%|   | 0/3", "\r 67%|## | 2/3", "\r100%|###| 3/3"):
        sys.stderr.write(state)
    sys.stderr.write("\n")
    print("a warning", file=sys.stderr)
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for i in range(1000):
            print(f"t{t} {i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    sys.stdout.write("last words without newline")
    run.finish()
    assert not isinstance(sys.stdout, ConsoleStream), "finish() restores the console"
    text = pipeline.read_run(run.dir).output
    assert text.splitlines()[:3] == [
        "hello from the run",
        "[stderr] 100%|###| 3/3",
        "[stderr] a warning",
    ], "stderr lines are marked in output.log"
    lines = _unmarked(text)
    assert lines[:3] == ["hello from the run", "100%|###| 3/3", "a warning"]
    assert sorted(lines[3:-1]) == sorted(f"t{t} {i}" for t in range(8) for i in range(1000))
    assert lines[-1] == "last words without newline"
    outputs = [e for e in mem.events if isinstance(e, ev.Output)]
    assert [(e.stream, e.text) for e in outputs[:3]] == [
        ("stdout", "hello from the run\n"),
        ("stderr", "100%|###| 3/3\n"),
        ("stderr", "a warning\n"),
    ]
    seqs = [e.seq for e in outputs]
    assert seqs == sorted(seqs), "the bus numbers them"
    assert seqs[0] > 0


def test_keyboard_interrupt_inside_a_run_restores_the_console(tmp_path: Path) -> None:
    before = (sys.stdout, sys.stderr)
    runs: list[pipeline.Run] = []

    def train() -> None:
        with pipeline.init(project="p", dir=tmp_path, settings={**E2E, "console": "wrap"}) as run:
            runs.append(run)
            print("working")
            raise KeyboardInterrupt  # Ctrl-C in the middle of training

    with pytest.raises(KeyboardInterrupt):
        train()
    assert (sys.stdout, sys.stderr) == before
    data = pipeline.read_run(runs[0].dir)
    assert _unmarked(data.output) == ["working"]
    assert data.metadata["exit_code"] == 1


def test_the_first_of_two_live_runs_keeps_the_console(tmp_path: Path) -> None:
    first = pipeline.init(project="p", dir=tmp_path / "a", settings={**E2E, "console": "wrap"})
    owner = console.owner()
    assert owner is not None
    assert owner.run_id == first.id
    second = pipeline.init(project="p", dir=tmp_path / "b", settings={**E2E, "console": "wrap"})
    assert console.owner() is owner
    print("while both live")
    second.finish()
    print("after the second finished")
    first.finish()
    assert console.owner() is None
    assert _unmarked(pipeline.read_run(first.dir).output) == [
        "while both live",
        "after the second finished",
    ]
    assert pipeline.read_run(second.dir).output == ""


def test_an_async_run_far_behind_gets_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hand_off_waits = threading.Event()

    async def main() -> pipeline.Run:
        settings = {**E2E, "console": "wrap", "max_backlog": 64}
        async with pipeline.init(project="p", dir=tmp_path, settings=settings) as run:
            await run.aflush()  # the pipeline is running on this loop
            source = run._source
            wait_for_room = source._wait_for_room

            def waiting() -> None:
                if threading.current_thread().name.startswith("runbus-console"):
                    hand_off_waits.set()
                wait_for_room()

            monkeypatch.setattr(source, "_wait_for_room", waiting)
            # Nothing below awaits, so the pipeline cannot drain: the backlog
            # passes max_backlog and the capture's hand-off thread waits for
            # room, which only this loop can make. finish() (on this loop's
            # thread) must take over from it rather than wait for it.
            for i in range(500):
                run.log({"x": i})
            for i in range(300):
                print(f"line {i}")
            hand_off_waits.wait()
        return run

    run = asyncio.run(main())
    data = pipeline.read_run(run.dir)
    assert _unmarked(data.output) == [f"line {i}" for i in range(300)]
    assert len(data.history) == 500


def test_console_off_leaves_the_streams_alone(tmp_path: Path) -> None:
    before = sys.stdout
    run = pipeline.init(project="p", dir=tmp_path, settings={**E2E, "console": "off"})
    assert sys.stdout is before
    print("not recorded")
    run.finish()
    assert pipeline.read_run(run.dir).output == ""


def test_the_traceback_of_an_uncaught_exception_is_in_the_output(tmp_path: Path) -> None:
    done = _child(
        """
        import sys, pipeline
        run = pipeline.init(project="p", dir=sys.argv[1], settings={
            "quiet": True, "system": False, "git": False, "requirements": False,
            "metadata": False, "console": "wrap",
        })
        print("before the crash")
        1 / 0
        """,
        str(tmp_path),
    )
    assert done.returncode == 1
    assert done.stdout == "before the crash\n"
    assert "ZeroDivisionError" in done.stderr
    data = pipeline.read_run(tmp_path)
    lines = _unmarked(data.output)
    assert lines[0] == "before the crash"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert data.state == "failed"


def test_a_run_in_fd_mode_records_subprocess_output(tmp_path: Path) -> None:
    done = _child(
        """
        import os, subprocess, sys, pipeline
        run = pipeline.init(project="p", dir=sys.argv[1], settings={
            "quiet": True, "system": False, "git": False, "requirements": False,
            "metadata": False, "console": "fd",
        })
        print("python says hi", flush=True)
        subprocess.run(["echo", "echo says hi"], check=True)
        os.write(1, b"os.write says hi\\n")
        print("to stderr", file=sys.stderr, flush=True)
        run.finish()
        print("after finish", flush=True)
        print(run.dir, file=sys.stderr)
        """,
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "python says hi",
        "echo says hi",
        "os.write says hi",
        "after finish",
    ]
    *err, run_dir = done.stderr.splitlines()
    assert err == ["to stderr"]
    lines = _unmarked(pipeline.read_run(Path(run_dir)).output)
    assert "to stderr" in lines
    assert [line for line in lines if line != "to stderr"] == [
        "python says hi",
        "echo says hi",
        "os.write says hi",
    ]
