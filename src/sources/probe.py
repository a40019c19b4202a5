"""The probe: git state, installed packages and host metadata, once per run.

The bus starts :func:`run_probe` as a source after ``init()`` has returned, so
nothing here can delay the start of training. All blocking work (``git``
subprocesses, scanning installed distributions, writing files) runs in worker
threads; the event loop only awaits them and sends the results. Each part is
sent as soon as it is ready, so a slow ``git`` never holds back the host
metadata or ``requirements.txt``.

If the run finishes first, the probe is cancelled: the worker thread is
abandoned (finish does not wait for it), the ``git`` process it is waiting on
is killed, and nothing more is written to the run directory.

Every failure is quiet: a debug message on the ``runbus`` logger, and the
fields it would have produced are absent. Field names are listed in
``docs/metadata.md``.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from pipeline import events as ev
from pipeline.runinfo import RunInfo

log = logging.getLogger("runbus")

T = TypeVar("T")

#: Seconds one ``git`` command may take before it is killed.
GIT_TIMEOUT = 30.0
DIFF_FILE = "diff.patch"
REQUIREMENTS_FILE = "requirements.txt"

# A clean, predictable git: untranslated messages, never a pager or a credential
# prompt (the probe has no terminal), and no optional index lock, so a probe
# running beside the user's own `git commit` never makes it fail on index.lock.
_GIT_ENV = {
    "LC_ALL": "C",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_OPTIONAL_LOCKS": "0",
}
# The patch must apply with `git apply` whatever the user's diff config says:
# no colour, no external diff tool or textconv filter, the standard a/ b/ prefixes.
_DIFF_ARGS = (
    "diff",
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--src-prefix=a/",
    "--dst-prefix=b/",
    "HEAD",
    "--",
)


async def run_probe(
    send: MemoryObjectSendStream[list[ev.Item]],
    *,
    run: RunInfo,
    git: bool,
    requirements: bool,
    metadata: bool,
    diff_limit: int,
    cwd: str | None = None,
) -> None:
    """Record git state, ``requirements.txt`` and host metadata for ``run``, then return.

    Sends ``Metadata`` events (``git`` keys and host keys) and one
    ``FileSaved`` per file written into ``run.dir`` (``diff.patch``,
    ``requirements.txt``). ``cwd`` is the program's working directory (default:
    the current one), where ``git`` runs. ``diff_limit`` caps ``diff.patch`` in
    bytes. Never raises, except cancellation, which abandons the work at once.
    """
    stop = _Stopper()
    try:
        where = cwd if cwd is not None else _getcwd()
        parts: list[Callable[[], list[ev.Item]]] = []
        # Cheapest first: a slow git must not hold back the rest.
        if metadata:
            parts.append(lambda: _metadata_part(run, where))
        if requirements:
            parts.append(lambda: _requirements_part(run, stop))
        if git and where is not None:
            parts.append(lambda: _git_part(run, where, diff_limit, stop))
        for part in parts:
            items = await _in_thread(part, stop)
            if items:
                await send.send(items)
    except Exception as exc:  # the run goes on without what is missing
        log.debug("runbus: the probe of run %s stopped: %r", run.id, exc)


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError as exc:  # the directory was removed under the program
        log.debug("runbus: no working directory: %r", exc)
        return None


async def _in_thread(fn: Callable[[], T], stop: _Stopper) -> T:
    """Run ``fn`` in a worker thread; on cancellation abandon it and stop its git."""
    try:
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except BaseException:
        stop.set()
        raise


class _Stopper:
    """Tells an abandoned worker to stop, and kills the git process it waits on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def set(self) -> None:
        with self._lock:
            self.stopped = True
            proc = self._proc
        if proc is not None:
            _kill(proc)

    def adopt(self, proc: subprocess.Popen[bytes] | None) -> bool:
        """Track ``proc`` (None: the one tracked has ended); False if stopped."""
        with self._lock:
            self._proc = proc
            return not self.stopped


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        proc.kill()


# -- metadata ----------------------------------------------------------------


def _metadata_part(run: RunInfo, cwd: str | None) -> list[ev.Item]:
    values = host_metadata(cwd)
    return [ev.Metadata(run.id, 0, time.time(), values)] if values else []


def host_metadata(cwd: str | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Host, user, OS, Python, CPU, memory, GPU visibility and SLURM keys.

    Identity, program, arguments and start time come from ``init()`` and are
    not repeated. A key whose value cannot be found is left out. ``environ``
    defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if cwd is not None:
        values["cwd"] = cwd
    _set(values, "user", getpass.getuser)
    _set(
        values,
        "os",
        lambda: {
            "system": platform.system(),
            "release": platform.release(),
            "version": platform.version(),
            "machine": platform.machine(),
            "platform": platform.platform(),
        },
    )
    values["python_implementation"] = platform.python_implementation()
    if sys.executable:
        values["python_executable"] = sys.executable
    _set(values, "cpu_count", os.cpu_count)
    _set(values, "cpu_count_physical", _physical_cpus)
    if hasattr(os, "sched_getaffinity"):
        # What this process may use: under SLURM, taskset or a container this
        # is often far fewer than the machine has.
        _set(values, "cpu_count_available", lambda: len(os.sched_getaffinity(0)))
    _set(values, "memory_total", _memory_total)
    if (visible := env.get("CUDA_VISIBLE_DEVICES")) is not None:
        values["cuda_visible_devices"] = visible
    slurm = {k[len("SLURM_") :].lower(): v for k, v in env.items() if k.startswith("SLURM_")}
    if slurm:
        values["slurm"] = dict(sorted(slurm.items()))
    return values


def _set(values: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    try:
        value = fn()
    except Exception as exc:  # one missing field must not cost the others
        log.debug("runbus: metadata %r unavailable: %r", key, exc)
        return
    if value is not None:
        values[key] = value


def _physical_cpus() -> int | None:
    import psutil

    count = psutil.cpu_count(logical=False)
    return int(count) if count else None


def _memory_total() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


# -- requirements.txt ----------------------------------------------------------


def _requirements_part(run: RunInfo, stop: _Stopper) -> list[ev.Item]:
    text = requirements_txt()
    if stop.stopped:
        return []
    saved = _save(run, REQUIREMENTS_FILE, text.encode("utf-8"))
    return [saved] if saved is not None else []


def requirements_txt() -> str:
    """Every installed distribution as ``name==version``, one a line, sorted.

    Names compare case-insensitively (``-``, ``_`` and ``.`` alike, as pip
    does); where a name is installed twice on ``sys.path``, the first one wins,
    as it does for ``import``.
    """
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        try:
            name = dist.metadata["Name"]
            version = dist.version
        except Exception as exc:  # a broken dist-info directory: skip it
            log.debug("runbus: skipping a distribution without metadata: %r", exc)
            continue
        if not name or not version:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        found.setdefault(key, f"{name}=={version}")
    return "".join(f"{found[key]}\n" for key in sorted(found))


# -- git -----------------------------------------------------------------------


def _git_part(run: RunInfo, cwd: str, diff_limit: int, stop: _Stopper) -> list[ev.Item]:
    git = _Git(cwd, stop)
    values, diff = _git_state(git, diff_limit)
    if not values or stop.stopped:
        return []
    items: list[ev.Item] = [ev.Metadata(run.id, 0, time.time(), {"git": values})]
    if diff:
        saved = _save(run, DIFF_FILE, diff)
        if saved is not None:
            items.append(saved)
    elif run.resumed:
        # The metadata now describes this segment's clean tree; an earlier
        # segment's patch left in place would contradict it.
        with contextlib.suppress(OSError):
            (run.dir / DIFF_FILE).unlink()
    return items


class _Git:
    """Runs ``git`` in one directory, with a timeout, killable from another thread."""

    def __init__(self, cwd: str, stop: _Stopper) -> None:
        self.cwd = cwd
        self.stop = stop
        self.exe = shutil.which("git")
        self.env = {**os.environ, **_GIT_ENV}

    def run(self, *args: str, limit: int | None = None) -> tuple[bytes, bool] | None:
        """Stdout and whether it was cut at ``limit`` bytes; None if git failed."""
        if self.exe is None or self.stop.stopped:
            return None
        try:
            proc = subprocess.Popen(
                [self.exe, "--no-pager", *args],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            log.debug("runbus: cannot run git: %r", exc)
            self.exe = None  # it will not work for the next command either
            return None
        if not self.stop.adopt(proc):
            _kill(proc)
        # A blocking read cannot time out by itself; the timer kills git instead.
        timer = threading.Timer(GIT_TIMEOUT, _kill, (proc,))
        timer.daemon = True
        timer.start()
        chunks: list[bytes] = []
        size = 0
        cut = False
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if limit is not None and size > limit:
                    cut = True  # the rest is not wanted; don't let git write it
                    _kill(proc)
                    break
            code = proc.wait()
        finally:
            timer.cancel()
            self.stop.adopt(None)
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.poll() is None:
                _kill(proc)
                proc.wait()
        if cut:
            return b"".join(chunks), True
        if code != 0:
            # A negative code is a signal: the timeout passed, or the run finished.
            why = "was stopped" if code < 0 else f"exited with {code}"
            log.debug("runbus: git %s %s in %s", " ".join(args), why, self.cwd)
            return None
        return b"".join(chunks), False

    def text(self, *args: str) -> str | None:
        """Stdout stripped, or None if git failed or printed nothing."""
        found = self.run(*args)
        if found is None:
            return None
        out = found[0].decode("utf-8", "replace").strip()
        return out or None


def _git_state(git: _Git, diff_limit: int) -> tuple[dict[str, Any], bytes]:
    """The ``git`` metadata keys and the ``diff.patch`` bytes (empty when clean).

    Not a repository, or no git: ``({}, b"")``.
    """
    root = git.text("rev-parse", "--show-toplevel")
    if root is None:
        return {}, b""
    values: dict[str, Any] = {"root": root}
    commit = git.text("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if commit is not None:
        values["commit"] = commit
    branch = git.text("symbolic-ref", "--quiet", "--short", "HEAD")
    if branch is not None:
        values["branch"] = branch
    remote = _remote_url(git, branch)
    if remote is not None:
        values["remote"] = remote
    # Tracked files only, like the patch: untracked files are not recorded.
    status = git.run("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        values["dirty"] = bool(status[0].strip())
    diff = b""
    if commit is not None and values.get("dirty", True):
        found = git.run(*_DIFF_ARGS, limit=diff_limit)
        if found is not None:
            diff, cut = found
            if cut:
                diff = _cut(diff, diff_limit)
                values["diff_truncated"] = True
    return values, diff


def _remote_url(git: _Git, branch: str | None) -> str | None:
    """The URL of the branch's upstream remote, else ``origin``, else the first one."""
    names = (git.text("remote") or "").split()
    if not names:
        return None
    name = names[0]
    upstream = git.text("config", "--get", f"branch.{branch}.remote") if branch else None
    if upstream in names:
        name = upstream
    elif "origin" in names:
        name = "origin"
    url = git.text("remote", "get-url", name)
    return strip_credentials(url) if url is not None else None


def _cut(diff: bytes, limit: int) -> bytes:
    """``diff`` cut to ``limit`` bytes at a line end, with a note line after."""
    head = diff[:limit]
    end = head.rfind(b"\n")
    if end >= 0:
        head = head[: end + 1]
    elif head:
        head += b"\n"
    note = (
        f"# runbus: diff.patch cut here: the diff is larger than diff_limit "
        f"({limit} bytes); the rest is not recorded (raise settings.diff_limit "
        f"or RUNBUS_DIFF_LIMIT to keep more)\n"
    )
    return head + note.encode()


# scheme://[userinfo@]host...: the authority runs to the first "/", and the
# userinfo to the last "@" in it, so a password with an unescaped "@", "?" or
# "#" in it is still removed whole.
_URL_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/]*)(?P<rest>.*)$")
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}


def strip_credentials(url: str) -> str:
    """``url`` without credentials.

    ``https://user:token@host/x`` and ``https://token@host/x`` become
    ``https://host/x``, and a query string or fragment (tokens travel there
    too) is dropped. ssh forms keep the user name, which is no secret and is
    needed to connect, but lose any password: ``ssh://git:pw@host/x`` becomes
    ``ssh://git@host/x``, ``git:pw@host:x`` becomes ``git@host:x``. Local
    paths are returned as they are.
    """
    m = _URL_RE.match(url)
    if m is not None:
        scheme, authority = m["scheme"], m["authority"]
        user = ""
        if "@" in authority:
            userinfo, _, authority = authority.rpartition("@")
            if scheme.lower() in _SSH_SCHEMES and userinfo:
                user = userinfo.split(":", 1)[0] + "@"
        rest = re.split(r"[?#]", authority + m["rest"], maxsplit=1)[0]
        return f"{scheme}://{user}{rest}"
    # scp-like ssh, as git tells it apart from a path: [user[:pw]@]host:path
    # with the ":" before any "/".
    slash = url.find("/")
    head = url if slash < 0 else url[:slash]
    at = head.rfind("@")
    if at >= 0 and ":" in head[at + 1 :]:
        user = url[:at].split(":", 1)[0]
        return f"{user}@{url[at + 1 :]}" if user else url[at + 1 :]
    return url


# -- files ---------------------------------------------------------------------


def _save(run: RunInfo, name: str, data: bytes) -> ev.FileSaved | None:
    """Write ``name`` into the run directory atomically and durably; None if it failed."""
    run_dir = run.dir
    path = run_dir / name
    # A dot name: read_run and the file listing skip it while it is half written.
    tmp = run_dir / f".{name}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("runbus: cannot write %s: %r", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    return ev.FileSaved(run.id, 0, time.time(), name, hashlib.sha256(data).hexdigest(), len(data))
