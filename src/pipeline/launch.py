"""Starting runs: ids, names, run directories, resume, sinks, and exit handling."""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from pipeline import __version__
from pipeline.reader import Replay, read_log
from pipeline.run import Run, _config_values, _remember, check_placement, live_runs
from pipeline.runinfo import RunInfo
from pipeline.runner import SinkSpec
from pipeline.settings import Settings, api_key, run_mode, runs_dir, server_url
from sinks.base import Sink

log = logging.getLogger("runbus")

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_ADJECTIVES = (
    "amber",
    "brisk",
    "calm",
    "dusky",
    "eager",
    "fancy",
    "gentle",
    "hazy",
    "icy",
    "jolly",
    "keen",
    "lucid",
    "misty",
    "noble",
    "olive",
    "proud",
    "quiet",
    "rapid",
    "sunny",
    "tidy",
    "upbeat",
    "vivid",
    "wild",
    "young",
    "zesty",
)
_NOUNS = (
    "river",
    "meadow",
    "comet",
    "forest",
    "harbor",
    "island",
    "lagoon",
    "mesa",
    "nebula",
    "ocean",
    "pine",
    "quartz",
    "ridge",
    "summit",
    "tundra",
    "valley",
    "willow",
    "glacier",
    "canyon",
    "dune",
    "ember",
    "fjord",
    "grove",
    "breeze",
    "cedar",
)
_RESUME = {
    None: None,
    False: None,
    True: "allow",
    "allow": "allow",
    "must": "must",
    "never": "never",
}


def new_id() -> str:
    """A fresh 8-character run id."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _friendly_name(root: Path) -> str:
    try:
        count = sum(1 for e in os.scandir(root) if e.name.startswith("run-"))
    except OSError:
        count = 0
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{count + 1}"


def find_run_dir(root: Path, run_id: str) -> Path | None:
    """The run directory of ``run_id`` under ``root``, if there is one."""
    try:
        matches = sorted(root.glob(f"run-*-{run_id}"))
    except OSError:
        return None
    matches = [m for m in matches if m.name.split("-", 2)[-1] == run_id and m.is_dir()]
    return matches[-1] if matches else None


class _Resume:
    """A previous run's state, restored into a resumed run's stages."""

    def __init__(self, replay: Replay) -> None:
        self.replay = replay
        self.config = dict(replay.config)

    def restore(self, merger: Any, summary: Any) -> int:
        self.replay.restore_summary(summary)
        return self.replay.restore_steps(merger)


def init(
    project: str | None = None,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    dir: str | os.PathLike[str] | None = None,
    mode: str | None = None,
    server: str | None = None,
    api_key: str | None = None,
    sinks: Sequence[Sink | SinkSpec] | None = None,
    id: str | None = None,
    resume: bool | str | None = None,
    tags: Iterable[str] | None = None,
    notes: str | None = None,
    group: str | None = None,
    settings: Settings | Mapping[str, Any] | None = None,
) -> Run:
    """Start a run and return it. See the user guide for every argument.

    ``resume``: ``"allow"`` (or True) continues run ``id`` if it exists,
    ``"must"`` requires it to exist, ``"never"`` requires it not to.
    Raises ``ValueError``/``TypeError`` naming the argument for bad input.
    """
    start = time.time()
    resolved = Settings.resolve(settings)
    project = _text("project", project)
    name = _text("name", name)
    notes = _text("notes", notes)
    group = _text("group", group)
    tag_tuple = _tags(tags)
    if resume not in _RESUME:
        raise ValueError(f"init(resume={resume!r}): use 'allow', 'must', 'never', True or False")
    resume_mode = _RESUME[resume]
    if id is not None and (not isinstance(id, str) or not _ID_RE.match(id)):
        raise ValueError(f"init(id={id!r}): ids are 1-64 letters, digits, '_' or '-'")
    srv = server_url(server)
    _key = _api_key(api_key)
    run_mode_ = run_mode(mode, srv)
    if run_mode_ == "online":
        # A stored `runbus login` fills in what the arguments and environment
        # left out; only when the mode is already online, so a saved login never
        # turns a script or a test online by itself.
        from pipeline.sync import resolve_credentials

        srv, _key = resolve_credentials(srv, _key)
        if srv is None:
            raise ValueError(
                "init(mode='online') needs a server: pass server=, set $RUNBUS_SERVER, "
                "or run `runbus login URL`"
            )
    root = runs_dir(dir)
    extra_sinks = _specs(sinks)
    # Before anything is created: a bad config must not leave a run directory behind.
    config = _config_values(config) if config is not None else None

    run_id = id or new_id()
    previous = find_run_dir(root, run_id) if id is not None else None
    if resume_mode == "must" and previous is None:
        raise ValueError(f"init(id={run_id!r}, resume='must'): no run {run_id!r} in {root}")
    if previous is not None and resume_mode in (None, "never"):
        raise ValueError(
            f"init(id={run_id!r}): run {run_id!r} already exists in {previous}; pass "
            f"resume='allow' to continue it, or choose another id"
        )

    replay: Replay | None = None
    if previous is not None:
        found = read_log(previous)
        replay = Replay(run_id)
        replay.feed(found.events)
        run_dir = previous
        # A resumed run keeps its identity unless the call says otherwise.
        before = replay.metadata
        name = name or str(before.get("name", run_id))
        project = project or _str_or_none(before.get("project"))
        group = group if group is not None else _str_or_none(before.get("group"))
        notes = notes if notes is not None else _str_or_none(before.get("notes"))
        if tags is None and isinstance(before.get("tags"), list):
            tag_tuple = tuple(str(t) for t in before["tags"])
    else:
        stamp = dt.datetime.fromtimestamp(start).strftime("%Y%m%d_%H%M%S")
        run_dir = root / f"run-{stamp}-{run_id}"
        name = name or _friendly_name(root)

    disabled = run_mode_ == "disabled"
    if not disabled:
        check_placement(resolved.pipeline)  # before anything is created
    info = RunInfo(
        id=run_id,
        name=name,
        project=project or "uncategorized",
        dir=run_dir,
        start_ts=float(replay.metadata.get("start_ts", start)) if replay else start,
        resumed=replay is not None,
        group=group,
        tags=tag_tuple,
        notes=notes,
        settings=resolved,
        last_seq=replay.last_seq if replay else 0,
    )
    specs = [] if disabled else _builtin_sinks(info, resolved) + extra_sinks
    if not disabled:
        from sinks.disk import DiskSink, prepare_run_dir

        try:
            # The directory exists when init() returns, so users can save files into it.
            prepare_run_dir(run_dir)
        except OSError as exc:
            log.warning(
                "runbus: cannot create the run directory %s (%s); the run goes on without "
                "its disk sink. Set dir= or $RUNBUS_DIR to a writable directory.",
                run_dir,
                exc.strerror or exc,
            )
            # Reported once here; the disk sink would only fail again on open.
            specs = [s for s in specs if not isinstance(s.sink, DiskSink)]
        if run_mode_ == "online" and any(isinstance(s.sink, DiskSink) for s in specs):
            # The http sink uploads from the run's event log, so it needs the disk sink.
            from sinks.http import HttpSink

            limit = resolved.upload_timeout
            http = HttpSink(str(srv), _key, upload_timeout=limit)
            # Its close may take the whole upload deadline: give the runner more.
            specs.insert(
                len(specs) - len(extra_sinks), SinkSpec(http, timeout=max(limit + 10, 30.0))
            )

    metadata = _start_metadata(info, run_mode_, start, replay)
    run = Run(
        info=info,
        settings=resolved,
        sinks=specs,
        config=config,
        start_metadata=metadata,
        resume_state=_Resume(replay) if replay is not None else None,
        disabled=disabled,
    )
    _remember(run)
    if not disabled:
        from sources.auto import attach_sources

        _install_exit_hooks()
        attach_sources(run)
    run._start()
    return run


def _text(what: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"init({what}=...) must be a str, not {type(value).__name__}")
    return value


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise TypeError("init(tags=...) takes a list of strings, not one string")
    out = tuple(tags)
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"init(tags=...): tag {t!r} is a {type(t).__name__}, not a str")
    return out


def _api_key(given: str | None) -> str | None:
    return api_key(given)


def _specs(sinks: Sequence[Sink | SinkSpec] | None) -> list[SinkSpec]:
    if sinks is None:
        return []
    if isinstance(sinks, SinkSpec | str) or not isinstance(sinks, Sequence):
        raise TypeError("init(sinks=...) takes a list of Sink instances or SinkSpec")
    return [s if isinstance(s, SinkSpec) else SinkSpec(s) for s in sinks]


def _builtin_sinks(info: RunInfo, settings: Settings) -> list[SinkSpec]:
    from sinks.disk import DiskSink
    from sinks.stdout import StdoutSink

    specs = [SinkSpec(DiskSink.from_run(info))]
    terminal = StdoutSink.from_run(info)
    if terminal is not None:
        # Block, not drop: it writes a line at start and a table at finish, and
        # dropping its Summary or Finish would print a wrong ending.
        specs.append(SinkSpec(terminal))
    if settings.sinks:
        from importlib.metadata import entry_points  # only plugin users pay for this import

        found = {ep.name: ep for ep in entry_points(group="runbus.sinks")}
        for sink_name in settings.sinks:
            if sink_name in ("disk", "stdout"):
                continue
            ep = found.get(sink_name)
            if ep is None:
                raise ValueError(
                    f"settings.sinks names {sink_name!r}, but no installed package provides "
                    f"a 'runbus.sinks' entry point of that name (found: {', '.join(sorted(found))})"
                )
            sink = ep.load()(info)
            if sink is not None:
                specs.append(sink if isinstance(sink, SinkSpec) else SinkSpec(sink))
    return specs


def _start_metadata(info: RunInfo, mode: str, now: float, replay: Replay | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "id": info.id,
        "name": info.name,
        "project": info.project,
        "group": info.group,
        "tags": list(info.tags),
        "notes": info.notes,
        "state": "running",
        "mode": mode,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "program": sys.argv[0] if sys.argv else None,
        "args": sys.argv[1:],
        "runbus_version": __version__,
        "format": 1,
    }
    if replay is None:
        meta["start_ts"] = info.start_ts
        meta["start_time"] = dt.datetime.fromtimestamp(info.start_ts, dt.UTC).isoformat()
    else:
        previous = replay.metadata
        meta = {**previous, **meta}
        meta["resumed"] = int(previous.get("resumed", 0)) + 1
        meta["resumed_at"] = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
        for stale in ("end_ts", "end_time", "exit_code", "duration"):
            meta.pop(stale, None)
    return meta


# -- process exit ----------------------------------------------------------------

_hooks_installed = False
_hooks_lock = threading.Lock()
_uncaught: list[BaseException] = []
_exit_status: list[object] = []


def _exit_code(status: object) -> int:
    """The process exit code ``sys.exit(status)`` gives."""
    if status is None:
        return 0
    if isinstance(status, int) and not isinstance(status, bool):
        return status
    return 1  # sys.exit("message") prints it and exits with 1


def _install_exit_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        _uncaught.append(exc)
        previous(exc_type, exc, tb)

    sys.excepthook = hook
    real_exit = sys.exit

    def exit_recording_code(status: str | int | None = None) -> NoReturn:
        # SystemExit never reaches sys.excepthook; remember the code for atexit.
        _exit_status.append(status)
        real_exit(status)

    sys.exit = exit_recording_code
    atexit.register(_finish_at_exit)


def _finish_at_exit() -> None:
    """Finish runs the program left open, so exit never hangs and nothing is lost."""
    code = 1 if _uncaught else _exit_code(_exit_status[-1] if _exit_status else None)
    for run in reversed(live_runs()):
        if run._thread is None:
            continue  # an async run's loop is gone; its task ended with it
        try:
            run.finish(exit_code=code, timeout=run.settings.sink_timeout + 5)
        except Exception:  # never let one run block the others at exit
            log.exception("runbus: finishing run %s at exit failed", run.id)
