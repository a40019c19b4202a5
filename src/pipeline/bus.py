"""The bus: sources → stages → fan-out → sink runners, on one event loop.

Sources send batches into one bounded anyio memory stream. The stage task
numbers input events, runs each item depth-first through the stage chain (so
output order is sequence order), and offers every output batch to each sink
runner's bounded queue. Shutdown drains: ``Stop`` flows through the stages
(closing the open row and emitting the final summary), the bus appends the
final metadata and the ``Finish`` event, then closes every runner's queue; each
runner writes what it holds, flushes and closes its sink within its deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline import events as ev
from pipeline.media.base import encode_values
from pipeline.runinfo import RunInfo
from pipeline.runner import Part, SinkRunner, SinkSpec
from pipeline.settings import Settings
from pipeline.steps import Sequencer, StepMerger
from pipeline.summary import SummaryStage
from sources.user import CallSource

log = logging.getLogger("runbus")

#: A source other than the user's calls: runs until cancelled at shutdown,
#: sending batches of events (``seq`` 0: the bus numbers them).
SourceFn = Callable[[MemoryObjectSendStream[list[ev.Item]]], Awaitable[None]]

# Input events made outside the stages carry seq 0 and are numbered on entry.
_NUMBERED_ON_ENTRY = frozenset(
    {"config", "summary_set", "metric", "metadata", "stats", "output", "file"}
)


def _chain(stages: list[Any], last: Callable[[ev.Item], None]) -> Callable[[ev.Item], None]:
    emit = last
    for stage in reversed(stages):
        emit = _link(stage.feed, emit)
    return emit


def _link(
    feed: Callable[[ev.Item, Callable[[ev.Item], None]], None], nxt: Callable[[ev.Item], None]
) -> Callable[[ev.Item], None]:
    def step(item: ev.Item) -> None:
        feed(item, nxt)

    return step


def _split(items: list[ev.Item]) -> list[Part]:
    """Events in runs, each flush on its own: runners then never scan for controls."""
    parts: list[Part] = []
    run: list[ev.Event] = []
    for item in items:
        if type(item) is ev.Flush:
            if run:
                parts.append(run)
                run = []
            parts.append(item)
        else:
            run.append(cast(ev.Event, item))
    if run:
        parts.append(run)
    return parts


async def _wait_for(completion: ev.Completion, timeout: float) -> None:
    """Wait on the loop (not blocking it) until ``completion`` is done or ``timeout``."""
    done = anyio.Event()
    completion.add_callback(done.set)
    with anyio.move_on_after(timeout):
        await done.wait()


def _numbered(item: ev.Item, seq: int) -> ev.Item:
    return cast(ev.Event, item)._replace(seq=seq)


class Bus:
    """One run's pipeline."""

    def __init__(
        self,
        info: RunInfo,
        settings: Settings,
        source: CallSource,
        sinks: list[SinkSpec],
        merger: StepMerger,
        summary: SummaryStage,
        seq: Sequencer,
        final_metadata: Callable[[], dict[str, Any]],
    ) -> None:
        self.info = info
        self.settings = settings
        self.source = source
        self.seq = seq
        self.merger = merger
        self.summary = summary
        self.final_metadata = final_metadata
        self.runners = [
            SinkRunner(
                spec,
                info,
                queue_size=settings.queue_size,
                max_retries=settings.max_retries,
                timeout=settings.sink_timeout,
            )
            for spec in sinks
        ]
        self.sources: list[SourceFn] = []
        self._graceful: set[SourceFn] = set()
        self._grace = 0.0
        self._graceful_left = 0
        self._graceful_done: anyio.Event | None = None
        self._out: list[ev.Item] = []
        self._feed = _chain([merger, summary], self._out.append)
        self._sources_scope: anyio.CancelScope | None = None
        self.stopped = False

    def add_source(self, fn: SourceFn, *, grace: float = 0.0) -> None:
        """Run ``fn`` beside the user's calls until shutdown (before :meth:`run`).

        ``grace``: at finish, wait up to this many seconds for ``fn`` to return
        on its own before it is cancelled (for one-shot sources such as the
        probe, so even a short run gets their results).
        """
        self.sources.append(fn)
        if grace > 0:
            self._grace = max(self._grace, grace)
            self._graceful.add(fn)

    async def run(self) -> None:
        """Run until a ``Stop`` has been processed and every sink is closed."""
        self.source.attach()
        self._sources_scope = anyio.CancelScope()
        self._graceful_left = len(self._graceful)
        self._graceful_done = anyio.Event()
        send, receive = anyio.create_memory_object_stream[list[ev.Item]](2)
        try:
            async with anyio.create_task_group() as tg:
                for runner in self.runners:
                    tg.start_soon(runner.run, name=f"runbus sink {runner.name}")
                tg.start_soon(
                    self._run_sources, [(fn, send.clone()) for fn in [self._ticker, *self.sources]]
                )
                tg.start_soon(self._intake, send)
                try:
                    await self._stage_loop(receive)
                finally:
                    self._cancel_sources()
                    for runner in self.runners:
                        runner.close_input()
        finally:
            self.source.close()

    def _cancel_sources(self) -> None:
        if self._sources_scope is not None:
            self._sources_scope.cancel()

    async def _run_sources(
        self, sources: list[tuple[SourceFn, MemoryObjectSendStream[list[ev.Item]]]]
    ) -> None:
        # One scope for all sources, so shutdown cancels them together.
        assert self._sources_scope is not None
        try:
            with self._sources_scope:
                async with anyio.create_task_group() as tg:
                    for fn, send in sources:
                        tg.start_soon(self._run_source, fn, send)
        finally:
            for _, send in sources:
                send.close()

    async def _run_source(self, fn: SourceFn, send: MemoryObjectSendStream[list[ev.Item]]) -> None:
        try:
            async with send:
                # A closed stream means the stage task has gone away: the run is ending.
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await fn(send)
        finally:
            if fn in self._graceful:
                self._graceful_left -= 1
                if not self._graceful_left and self._graceful_done is not None:
                    self._graceful_done.set()

    async def _ticker(self, send: MemoryObjectSendStream[list[ev.Item]]) -> None:
        interval = self.settings.flush_interval
        while True:
            await anyio.sleep(interval)
            await send.send([ev.Flush(None, True)])

    async def _intake(self, send: MemoryObjectSendStream[list[ev.Item]]) -> None:
        async with send:
            while True:
                batch = await self.source.next_batch()
                if not batch:
                    continue
                stop = batch[-1].kind == "stop"
                if stop:
                    if self._graceful_done is not None and self._graceful_left:
                        with anyio.move_on_after(self._grace):
                            await self._graceful_done.wait()
                    # Other sources end first so nothing follows the Finish event.
                    self._cancel_sources()
                await send.send(batch)
                if stop:
                    return
                await self.source.linger()

    async def _stage_loop(self, receive: MemoryObjectReceiveStream[list[ev.Item]]) -> None:
        feed = self._feed
        out = self._out
        numbered = _NUMBERED_ON_ENTRY
        async with receive:
            async for batch in receive:
                if self.stopped:
                    continue  # a source raced the shutdown; the run has ended
                for item in batch:
                    kind = item.kind
                    if kind in numbered and item.seq == 0:  # type: ignore[union-attr]
                        item = _numbered(item, self.seq())
                    elif kind == "log" and item.media:  # type: ignore[union-attr]
                        item = await self._encode_media(item, feed)  # type: ignore[arg-type]
                    feed(item)
                if not out:
                    continue
                emitted = out.copy()
                out.clear()
                await self._fan_out(emitted)

    async def _encode_media(self, call: ev.LogCall, feed: Callable[[ev.Item], None]) -> ev.LogCall:
        """The media stage: encode a call's media values off the loop, into files.

        The files are announced (``FileSaved``) before the row that refers to
        them. A value that fails to encode is reported with its key and step
        and left out; the rest of the row is kept.
        """
        # The row lands at the call's step, or at the merger's current one.
        step = call.step if call.step is not None else self.merger.step
        data, saved, failed = await anyio.to_thread.run_sync(
            encode_values, self.info.id, self.info.dir, call.data, step
        )
        for key, exc in failed:
            log.warning(
                "runbus: %r at step %d could not be stored (%s: %s); the rest of the row is kept",
                key,
                step,
                type(exc).__name__,
                exc,
            )
        for file in saved:
            feed(_numbered(file, self.seq()))
        self.source.media_done(call.media - 1)
        return call._replace(data=data, media=0)

    async def _fan_out(self, items: list[ev.Item]) -> None:
        flushes: list[ev.Completion] = []
        stop: ev.Stop | None = None
        plain = True
        # A periodic flush has no completion but must still reach the runners
        # as a part of its own, or no sink ever flushes on the timer.
        any_flush = False
        for item in items:
            kind = item.kind
            if kind == "flush":
                any_flush = True
                if item.completion is not None:  # type: ignore[union-attr]
                    flushes.append(item.completion)  # type: ignore[union-attr]
            elif kind == "barrier" or kind == "stop":
                plain = False
                if kind == "stop":
                    stop = item  # type: ignore[assignment]
        if not plain:
            completed = [i for i in items if i.kind == "barrier"]
            items = [i for i in items if i.kind != "barrier" and i.kind != "stop"]
            for barrier in completed:
                barrier.completion.done()  # type: ignore[union-attr]
        if stop is not None:
            # Let every sink write what came before, so the final metadata tells
            # each sink's true state and counts.
            drained = ev.Completion()
            flushes.append(drained)
            items.append(ev.Flush(drained, False))
        for completion in flushes:
            completion.expect(len(self.runners))
        parts = _split(items) if flushes or any_flush else [cast(list[ev.Event], items)]
        for runner in self.runners:
            for part in parts:
                await runner.offer(part)
        for completion in flushes:
            completion.done()
        if stop is not None:
            await _wait_for(drained, self.settings.sink_timeout)
            final = self._finish_events(stop.exit_code)
            for runner in self.runners:
                await runner.offer(final)
            self.stopped = True
            for runner in self.runners:
                runner.close_input()

    def _finish_events(self, exit_code: int) -> list[ev.Event]:
        now = time.time()
        values = {
            "state": "finished" if exit_code == 0 else "failed",
            "exit_code": exit_code,
            "end_ts": now,
            "end_time": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
            "duration": now - self.info.start_ts,
            "rows": self.merger.rows,
            "next_step": self.merger.step,
            "sinks": {r.name: r.stats.as_dict() for r in self.runners},
            **self.final_metadata(),
        }
        rid = self.info.id
        return [
            ev.Metadata(rid, self.seq(), now, values),
            ev.Finish(rid, self.seq(), now, exit_code),
        ]
