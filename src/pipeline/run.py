"""The Run: the object ``pipeline.init()`` returns, and the calls users make on it.

A run's pipeline lives either on a background thread with its own event loop
(``init()`` from plain code) or as a task on the caller's running asyncio loop
(``init()`` inside ``async`` code). Either way ``log()`` only validates, copies
and hands over; it never waits for I/O.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

# anyio loads its asyncio backend on first use. Loading it here, on the importing
# thread, keeps a new pipeline thread from spending a long time importing it
# while a busy training loop holds the GIL (its backlog would pile up meanwhile).
import anyio._backends._asyncio

from pipeline import events as ev
from pipeline.bus import Bus
from pipeline.media.base import Media
from pipeline.names import NameChecker
from pipeline.normalize import prepare_row, to_config_dict
from pipeline.runinfo import RunInfo
from pipeline.settings import Settings
from pipeline.steps import StepMerger, sequencer
from pipeline.summary import SummaryStage, parse_goal, parse_summary
from sources.user import CallSource

log = logging.getLogger("runbus")

# Builds the LogCall from a ready tuple, skipping the generated __new__ (hot path).
_new = tuple.__new__

#: How long a sync ``finish()`` waits for the pipeline beyond the sinks' deadlines.
_FINISH_SLACK = 10.0


class RunFinishedError(RuntimeError):
    """The run has finished; it takes no more calls that change it."""


class Config(MutableMapping[str, Any]):
    """``run.config``: a dict of the run's hyperparameters, kept on disk as it changes.

    Set keys with ``config["lr"] = 1e-3``, ``config.update({...})`` or
    ``config.lr = 1e-3``; values must be JSON-like (numbers, strings, bools,
    None, lists and dicts of them, numpy/torch scalars).
    """

    def __init__(self, run: Run, initial: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_data", {})
        object.__setattr__(self, "_lock", threading.Lock())
        if initial:
            self._data.update(_config_values(initial))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"config keys cannot be removed (tried {key!r}); set it to None instead")

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __repr__(self) -> str:
        return f"Config({self._data!r})"

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set several keys at once (one event, one rewrite of config.json)."""
        merged = dict(other, **kwargs)
        values = _config_values(merged)
        if not values:
            return
        run = self._run
        run._check_open("config.update()")
        with self._lock:
            self._data.update(values)
            run._put(ev.ConfigUpdate(run.id, 0, time.time(), values))

    def as_dict(self) -> dict[str, Any]:
        """A deep copy as a plain dict."""
        return _config_values(self._data)


def _config_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return to_config_dict(values, "config")


class SummaryView(MutableMapping[str, Any]):
    """``run.summary``: the run's summary values, readable and overridable.

    Reading waits until the pipeline has processed every earlier call (in async
    code on the run's own loop it shows what the pipeline has processed so
    far). ``run.summary[k] = v`` shows ``v`` for ``k`` until ``k`` is logged
    again; aggregations from ``define_metric`` keep running underneath.
    """

    def __init__(self, run: Run) -> None:
        self._run = run

    def _snapshot(self) -> dict[str, Any]:
        return self._run._summary_snapshot()

    def __getitem__(self, key: str) -> Any:
        return self._snapshot()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        if key not in self._snapshot():
            raise KeyError(key)
        run = self._run
        run._check_open("del run.summary[...]")
        run._put(ev.SummaryUpdate(run.id, 0, time.time(), {}, (key,)))

    def __iter__(self) -> Iterator[str]:
        return iter(self._snapshot())

    def __len__(self) -> int:
        return len(self._snapshot())

    def __repr__(self) -> str:
        return f"Summary({self._snapshot()!r})"

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Override several summary values at once."""
        merged = dict(other, **kwargs)
        values = to_config_dict(merged, "summary")
        if values:
            run = self._run
            run._check_open("run.summary[...] = ...")
            run._put(ev.SummaryUpdate(run.id, 0, time.time(), values, ()))


class Run:
    """A live run. Made by :func:`pipeline.init`; see the user guide for semantics."""

    def __init__(
        self,
        *,
        info: RunInfo,
        settings: Settings,
        sinks: list[Any],
        config: Mapping[str, Any] | None,
        start_metadata: dict[str, Any],
        resume_state: Any = None,
        disabled: bool = False,
    ) -> None:
        self._info = info
        self.settings = settings
        self._disabled = disabled
        self._names = NameChecker(settings.name_policy)
        self._source = CallSource(settings.max_backlog, settings.max_media_bytes)
        self._in_seq = itertools.count(1).__next__
        self._finished = False
        self._finish_lock = threading.Lock()
        self._done = threading.Event()
        self._pipeline_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self.exit_code: int | None = None
        self._forked_from: int | None = None
        # Values queued by attach() (run.watch) for the next log() call.
        self._extra: dict[str, Any] = {}
        self._extra_lock = threading.Lock()
        # Hook handles of run.watch(), owned by pipeline.watch.
        self._watches: list[Any] = []
        # Called at finish before the final events, e.g. to restore the console.
        self._closers: list[Callable[[], None]] = []

        seq = sequencer(info.last_seq)
        first_step = 0
        self._merger = StepMerger(info.id, info.start_ts, seq)
        self._summary_stage = SummaryStage(info.id, seq)
        if resume_state is not None:
            first_step = resume_state.restore(self._merger, self._summary_stage)
        self._merger.step = first_step
        self._bus = Bus(
            info,
            settings,
            self._source,
            sinks,
            self._merger,
            self._summary_stage,
            seq,
            self._final_metadata,
        )
        self.config = Config(self, None)
        self.summary = SummaryView(self)
        if resume_state is not None:
            self.config._data.update(resume_state.config)
        now = time.time()
        self._put(ev.Metadata(info.id, 0, now, start_metadata))
        initial = dict(resume_state.config) if resume_state is not None else {}
        if config is not None:
            initial.update(_config_values(config))
            self.config._data.update(initial)
        if initial:
            self._put(ev.ConfigUpdate(info.id, 0, now, initial))

    # -- identity ------------------------------------------------------------

    @property
    def id(self) -> str:
        """The run's id (unique within its project)."""
        return self._info.id

    @property
    def name(self) -> str:
        """The run's display name."""
        return self._info.name

    @property
    def project(self) -> str:
        """The project the run belongs to."""
        return self._info.project

    @property
    def dir(self) -> Path:
        """The run directory."""
        return self._info.dir

    @property
    def group(self) -> str | None:
        """The run's group, if any."""
        return self._info.group

    @property
    def tags(self) -> tuple[str, ...]:
        """The run's tags."""
        return self._info.tags

    @property
    def notes(self) -> str | None:
        """The run's notes."""
        return self._info.notes

    @property
    def start_time(self) -> float:
        """When the run started (epoch seconds)."""
        return self._info.start_ts

    @property
    def finished(self) -> bool:
        """Whether ``finish()`` has been called."""
        return self._finished

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running"
        return f"<Run {self.name} ({self.id}) {state} dir={str(self.dir)!r}>"

    # -- start ---------------------------------------------------------------

    def _start(self) -> None:
        if self._disabled:
            self._done.set()
            return
        loop = _pipeline_loop(self.settings.pipeline)
        if loop is not None:
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._task = loop.create_task(self._run_bus(), name=f"runbus {self.id}")
            return
        thread = threading.Thread(target=self._thread_main, name=f"runbus-{self.id}", daemon=True)
        self._thread = thread
        self._source.threaded = True
        thread.start()

    def _thread_main(self) -> None:
        try:
            anyio.run(self._run_bus)
        except BaseException as exc:  # reported in _run_bus
            self._pipeline_error = exc

    async def _run_bus(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        try:
            await self._bus.run()
        except BaseException as exc:
            self._pipeline_error = exc
            if not isinstance(exc, asyncio.CancelledError):
                log.error(
                    "runbus: the pipeline of run %s stopped on an error", self.id, exc_info=exc
                )
            raise
        finally:
            self._source.close()
            self._done.set()

    # -- logging ---------------------------------------------------------------

    def log(
        self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None
    ) -> None:
        """Log a dict of metrics: a new step unless ``commit=False``; see the user guide.

        Raises ``TypeError``/``ValueError`` naming the key for input that can
        never be stored, and :class:`RunFinishedError` after ``finish()``.
        """
        if self._finished:
            raise RunFinishedError(self._finished_message("run.log()"))
        row, nonfinite, has_media = prepare_row(data, self._names)
        if self._extra:
            has_media = self._merge_extra(row) or has_media
        # Media calls carry their copies' size (+1, so that 0 means none).
        media = 1 + _media_bytes(row) if has_media else 0
        if step is not None:
            step = _check_step(step)
        if commit is not None and commit is not True and commit is not False:
            raise TypeError(f"run.log(commit=...) must be True, False or None, not {commit!r}")
        if self._disabled:
            return
        call = _new(
            ev.LogCall,
            (
                self._info.id,
                self._in_seq(),
                time.time(),
                row,
                step,
                commit,
                nonfinite,
                media,
                "log",
            ),
        )
        if media:
            self._source.put_media(call, media - 1)
        else:
            self._source.put(call)

    def attach(self, values: Mapping[str, Any]) -> None:
        """Queue values (e.g. ``run.watch`` histograms) to ride along with the next ``log()``.

        Any thread may call it; the caller's keys win over attached ones on a
        clash. Values must already be storable (numbers or media objects).
        """
        with self._extra_lock:
            self._extra.update(values)

    def _merge_extra(self, row: dict[str, Any]) -> bool:
        with self._extra_lock:
            extra, self._extra = self._extra, {}
        media = False
        for key, value in extra.items():
            if key in row:
                continue
            if isinstance(value, Media):
                value = value._freeze()
                media = True
            row[key] = value
        return media

    def watch(self, models: Any, log: str = "gradients", log_freq: int = 100) -> None:
        """Record histograms of a PyTorch model's gradients and/or parameters.

        ``log``: ``"gradients"``, ``"parameters"`` or ``"all"``; every
        ``log_freq`` backward passes the histograms ride along with your next
        ``log()`` as ``gradients/<name>`` and ``parameters/<name>``. Needs
        ``pip install runbus[torch]``.
        """
        from pipeline.watch import watch as start_watching

        self._check_open("run.watch()")
        start_watching(self, models, log=log, log_freq=log_freq)

    def unwatch(self, models: Any = None) -> None:
        """Stop watching ``models`` (all watched models when None)."""
        from pipeline.watch import unwatch as stop_watching

        stop_watching(self, models)

    def define_metric(
        self,
        name: str,
        step_metric: str | None = None,
        *,
        step_sync: bool | None = None,
        hidden: bool = False,
        summary: str | None = None,
        goal: str | None = None,
    ) -> ev.MetricDef:
        """Declare how a metric (or a glob ``"val/*"``) is summarised and plotted.

        ``step_metric`` names its x-axis; with ``step_sync`` (default on) the
        step metric's latest value is filled into rows that lack it.
        ``summary`` is a comma list of min, max, mean, first, last, best, none;
        ``best`` follows ``goal`` (``"minimize"``/``"maximize"``).
        """
        if not isinstance(name, str) or not name or name == "*":
            raise ValueError(
                f"define_metric(name={name!r}): give a metric name or a glob like 'val/*'"
            )
        if "*" in name[:-1]:
            raise ValueError(
                f"define_metric({name!r}): only a trailing '*' is supported (e.g. 'val/*')"
            )
        if step_metric is not None and (not isinstance(step_metric, str) or "*" in step_metric):
            raise ValueError(f"define_metric(step_metric={step_metric!r}): give one metric name")
        aggs = parse_summary(summary)
        goal_ = parse_goal(goal)
        if aggs is not None and "best" in aggs and goal_ is None:
            raise ValueError(
                f"define_metric({name!r}, summary=...'best'...) needs goal='minimize' or 'maximize'"
            )
        self._check_open("define_metric()")
        sync = (step_metric is not None) if step_sync is None else bool(step_sync)
        m = ev.MetricDef(
            self.id, 0, time.time(), name, step_metric, sync, bool(hidden), aggs, goal_
        )
        self._put(m)
        return m

    def _put(self, item: ev.Item) -> None:
        if not self._disabled:
            self._source.put(item)

    def _check_open(self, what: str) -> None:
        if self._finished:
            raise RunFinishedError(self._finished_message(what))

    def _finished_message(self, what: str) -> str:
        if self._forked_from is not None:
            return (
                f"run {self.name} ({self.id}) belongs to process {self._forked_from}, and this "
                f"is a child forked from it, where the run's pipeline does not exist; "
                f"log from the parent, or call pipeline.init() in the child for a run of its own"
            )
        return (
            f"run {self.name} ({self.id}) has finished; {what} needs a live run "
            f"(call pipeline.init() to start a new one)"
        )

    # -- flush -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything logged so far is durable (fsynced) in every sink.

        Returns False if ``timeout`` passed first, or if some sink could not
        flush (it failed, is stopped, or dropped data under ``drop_newest``).
        Inside the run's own event loop use ``await run.aflush()``.
        """
        if self._disabled:
            return True
        if self._done.is_set():
            # The run has ended: everything was flushed at finish, if it went well.
            return self._pipeline_error is None
        self._not_on_loop("flush", "aflush")
        completion = ev.Completion()
        self._source.put_urgent(ev.Flush(completion, False))
        return self._wait(completion, timeout)

    async def aflush(self, timeout: float | None = None) -> bool:
        """Async ``flush()``: awaitable from any event loop."""
        if self._disabled:
            return True
        if self._done.is_set():
            # The run has ended: everything was flushed at finish, if it went well.
            return self._pipeline_error is None
        completion = ev.Completion()
        self._source.put_urgent(ev.Flush(completion, False))
        return await self._await(completion, timeout)

    def _wait(self, completion: ev.Completion, timeout: float | None) -> bool:
        """Wait for ``completion``; True if it completed and every part went well."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not completion.wait(0.05):
            if self._done.is_set():
                return completion.is_done and completion.ok
            if deadline is not None and time.monotonic() > deadline:
                return False
        return completion.ok

    async def _await(self, completion: ev.Completion, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            fut: asyncio.Future[None] = loop.create_future()

            def _resolve() -> None:
                if not fut.done():
                    fut.set_result(None)

            def _wake() -> None:
                loop.call_soon_threadsafe(_resolve)

            completion.add_callback(_wake)
            done_task = self._task
            waiters: list[asyncio.Future[Any]] = [fut]
            if done_task is not None:
                waiters.append(done_task)
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            return completion.is_done and completion.ok
        return await asyncio.to_thread(self._wait, completion, timeout)

    def _not_on_loop(self, what: str, instead: str) -> None:
        if (
            self._loop_thread is not None
            and self._thread is None
            and (threading.get_ident() == self._loop_thread)
        ):
            raise RuntimeError(
                f"run.{what}() was called inside the event loop that runs this run's "
                f"pipeline, where waiting would deadlock; use 'await run.{instead}()' "
                f"(or 'async with pipeline.init(...)')"
            )

    def _summary_snapshot(self) -> dict[str, Any]:
        if self._disabled:
            return {}
        on_own_loop = self._thread is None and threading.get_ident() == self._loop_thread
        not_started = self._loop_thread is None and self._thread is None
        if on_own_loop or not_started or self._done.is_set():
            return self._summary_stage.snapshot()
        completion = ev.Completion()
        self._source.put_urgent(ev.Barrier(completion))
        if self._wait(completion, None) and completion.result is not None:
            return dict(completion.result)
        return self._summary_stage.snapshot()

    # -- finish ----------------------------------------------------------------

    def finish(self, exit_code: int = 0, timeout: float | None = None) -> None:
        """End the run: close the open row, flush every sink, write the final state.

        A second call does nothing. Inside the run's own event loop use
        ``await run.afinish()``.
        """
        if not self._begin_finish(exit_code, "finish", "afinish"):
            self._join(timeout)
            return
        self._join(timeout)

    async def afinish(self, exit_code: int = 0, timeout: float | None = None) -> None:
        """Async ``finish()``."""
        self._begin_finish(exit_code, None, None)
        if self._disabled:
            return
        loop = asyncio.get_running_loop()
        if self._task is not None and loop is self._loop:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.CancelledError:
                if self._task.cancelled():
                    return
                raise
            except (TimeoutError, Exception):
                return
        else:
            await asyncio.to_thread(self._join, timeout)

    def _begin_finish(self, exit_code: int, what: str | None, instead: str | None) -> bool:
        if isinstance(exit_code, bool) or not isinstance(exit_code, int):
            raise TypeError(f"finish(exit_code=...) must be an int, not {exit_code!r}")
        if what is not None and instead is not None and not self._done.is_set():
            self._not_on_loop(what, instead)
        with self._finish_lock:
            if self._finished:
                return False
            self._finished = True
        self.exit_code = exit_code
        _forget(self)
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # a source failing to stop must not stop the finish
                log.exception("runbus: stopping a source of run %s failed", self.id)
        if not self._disabled:
            self._source.put_urgent(ev.Stop(exit_code))
        return True

    def _add_closer(self, close: Callable[[], None]) -> None:
        """Call ``close`` at finish, before the final events (sources use this)."""
        self._closers.append(close)

    def _join(self, timeout: float | None) -> None:
        if self._disabled:
            return
        limit = timeout
        if limit is None:
            limit = self.settings.sink_timeout * (self.settings.max_retries + 1) + _FINISH_SLACK
        if not self._done.wait(limit):
            log.warning(
                "runbus: run %s did not finish within %.0f s; its sinks may be incomplete "
                "(the event log holds everything flushed so far; `runbus sync` can resend it)",
                self.id,
                limit,
            )

    def _final_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._names.bad:
            out["bad_names"] = list(self._names.bad)
        return out

    # -- context managers ------------------------------------------------------

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    async def __aenter__(self) -> Run:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.afinish(exit_code=0 if exc_type is None else 1)


def _media_bytes(row: dict[str, Any]) -> int:
    return sum(v._nbytes() for v in row.values() if isinstance(v, Media))


def check_placement(place: str) -> None:
    """Raise ``ValueError`` now if the pipeline cannot run where settings ask."""
    _pipeline_loop(place)


def _pipeline_loop(place: str) -> asyncio.AbstractEventLoop | None:
    """The running loop to host the pipeline, or None for a thread of its own."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if place == "loop":
        if loop is None:
            raise ValueError(
                "settings.pipeline='loop' needs init() to be called inside a running "
                "asyncio event loop; use 'thread' (or 'auto') elsewhere"
            )
        return loop
    if place == "thread" or loop is None:
        return None
    # A notebook kernel runs cells inside its loop, yet users call finish() there
    # synchronously, which only a pipeline on its own thread can serve.
    if "ipykernel" in sys.modules:
        return None
    return loop


def _check_step(step: Any) -> int:
    if type(step) is not int:
        module = type(step).__module__.partition(".")[0]
        if module in ("numpy", "torch") and getattr(step, "ndim", 0) == 0:
            value = step.item()
            if type(value) is int:
                return _check_step(value)
        if isinstance(step, int) and not isinstance(step, bool):
            return _check_step(int(step))
        raise TypeError(f"run.log(step=...) must be an int, not {type(step).__name__} ({step!r})")
    if step < 0:
        raise ValueError(f"run.log(step={step}): steps start at 0")
    return step


# -- the process's live runs ---------------------------------------------------

_live: list[Run] = []
_live_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child has the parent's runs but not their pipeline threads.

    Logging there would queue calls nobody drains (and then wait forever for
    room), and finishing them at the child's exit would write into the
    parent's run directory: mark them ended here instead, with a clear error.
    """
    global _live_lock
    _live_lock = threading.Lock()  # another thread may have held it at fork
    parent = os.getppid()
    for run in _live:
        run._forked_from = parent
        run._finished = True
        run._source.closed = True  # nothing drains it here: never wait for room
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _remember(run: Run) -> None:
    with _live_lock:
        _live.append(run)


def _forget(run: Run) -> None:
    with _live_lock:
        if run in _live:
            _live.remove(run)


def current_run() -> Run | None:
    """The most recently started run that has not finished, if any."""
    with _live_lock:
        return _live[-1] if _live else None


def live_runs() -> list[Run]:
    """Every run of this process that has not finished."""
    with _live_lock:
        return list(_live)
