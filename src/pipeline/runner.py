"""The sink runner: one per sink, owning everything a sink should not.

It holds the sink's bounded queue (``block`` waits for room, ``drop_newest``
drops the incoming batch and counts what it dropped), coalesces queued batches
into bigger writes, flushes on the bus's flush controls, retries a failing
``write``/``flush`` with exponential backoff and jitter, and stops a sink that
keeps failing: a stopped sink drains its queue without blocking anyone, so a
broken or slow sink never stalls the other sinks or the training loop beyond
its own queue's policy.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline import events as ev
from pipeline.runinfo import RunInfo
from pipeline.settings import QueuePolicy
from sinks.base import Sink, SinkClosedError

log = logging.getLogger("runbus")

#: Events handed to one ``write`` at most (queued batches are coalesced up to it).
MAX_WRITE = 1024
_BACKOFF_BASE = 0.05
_BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class SinkSpec:
    """A sink plus how its runner treats it: ``init(sinks=[SinkSpec(my_sink, ...)])``.

    ``policy``: ``"block"`` (default) applies backpressure when the sink's queue
    is full; ``"drop_newest"`` drops incoming batches instead, and counts them.
    """

    sink: Sink
    policy: QueuePolicy = "block"
    queue_size: int | None = None
    max_retries: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in ("block", "drop_newest"):
            raise ValueError(f"SinkSpec(policy={self.policy!r}): use 'block' or 'drop_newest'")
        if not isinstance(self.sink, Sink):
            raise TypeError(
                f"{type(self.sink).__name__} is not a runbus sink: it needs a 'name' and "
                f"async open/write/flush/aclose methods (see sinks.base.Sink)"
            )


@dataclass
class SinkStats:
    """What happened to one sink, reported in the run's metadata."""

    name: str
    state: str = "starting"  # running | failed | closed | timed out
    written: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for metadata."""
        return {
            "state": self.state,
            "written": self.written,
            "dropped": self.dropped,
            "errors": self.errors,
            "last_error": self.last_error,
        }


#: What a runner's queue holds: a read-only batch of events, or a flush.
Part = list[ev.Event] | ev.Flush


class SinkRunner:
    """Runs one sink on the bus's loop."""

    def __init__(
        self,
        spec: SinkSpec,
        run: RunInfo,
        *,
        queue_size: int,
        max_retries: int,
        timeout: float,
    ) -> None:
        self.sink = spec.sink
        self.policy = spec.policy
        self.run_info = run
        self.max_retries = max_retries if spec.max_retries is None else spec.max_retries
        self.timeout = timeout if spec.timeout is None else spec.timeout
        self.stats = SinkStats(name=getattr(self.sink, "name", type(self.sink).__name__))
        size = spec.queue_size or queue_size
        self._send: MemoryObjectSendStream[Part]
        self._receive: MemoryObjectReceiveStream[Part]
        self._send, self._receive = anyio.create_memory_object_stream[Part](size)
        self.failed = False

    @property
    def name(self) -> str:
        """The sink's name."""
        return self.stats.name

    # -- producer side (the bus) ---------------------------------------------

    async def offer(self, part: Part) -> None:
        """Queue a batch (or a flush) by this sink's policy; never blocks on a stopped sink."""
        if self.failed:
            self._discard(part)
            return
        if self.policy == "block":
            await self._send.send(part)
            return
        try:
            self._send.send_nowait(part)
        except anyio.WouldBlock:
            # A sink that cannot keep up is not waited for, not even by a flush:
            # what it dropped it cannot flush anyway.
            self._discard(part)

    def close_input(self) -> None:
        """End of stream: the runner drains what is queued, then closes the sink."""
        self._send.close()

    def _discard(self, part: Part) -> None:
        if type(part) is list:
            self.stats.dropped += len(part)
        elif part.completion is not None:  # type: ignore[union-attr]
            # Dropped data cannot be flushed: a flush waiting on this sink learns so.
            part.completion.done(ok=False)  # type: ignore[union-attr]

    # -- consumer side (this runner's task) ----------------------------------

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the sink, feed it until end of stream, then flush and close it."""
        opened = await self._attempt("open", self.sink.open, self.run_info, retries=0)
        task_status.started()
        if opened:
            self.stats.state = "running"
        try:
            async with self._receive:
                async for part in self._receive:
                    await self._process(self._take_more(part))
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    def _take_more(self, first: Part) -> list[Part]:
        """``first`` and whatever else is queued, up to ``MAX_WRITE`` events."""
        parts = [first]
        size = len(first) if type(first) is list else 0
        while size < MAX_WRITE:
            try:
                more = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            parts.append(more)
            if type(more) is list:
                size += len(more)
        return parts

    async def _process(self, parts: list[Part]) -> None:
        # Consecutive batches go to the sink as one write; a flush ends a write.
        pending: list[ev.Event] | None = None
        owned = False  # batches are shared with the other runners: copy before extending
        for part in parts:
            if type(part) is list:
                if pending is None:
                    pending = part
                else:
                    if not owned:
                        pending, owned = list(pending), True
                    pending.extend(part)
                continue
            if pending:
                await self._write(pending)
            pending, owned = None, False
            await self._flush(part)  # type: ignore[arg-type]
        if pending:
            await self._write(pending)

    async def _flush(self, flush: ev.Flush) -> None:
        flushed = not self.failed and await self._attempt("flush", self.sink.flush)
        if flush.completion is not None:
            flush.completion.done(ok=flushed)

    async def _write(self, events: list[ev.Event]) -> None:
        if self.failed:
            self.stats.dropped += len(events)
        elif await self._attempt("write", self.sink.write, events):
            self.stats.written += len(events)
        else:
            self.stats.dropped += len(events)

    async def _attempt(
        self,
        what: str,
        fn: Callable[..., Awaitable[None]],
        *args: Any,
        retries: int | None = None,
    ) -> bool:
        """Call a sink method with a deadline and retries; stop the sink if it keeps failing."""
        if self.failed:
            return False
        attempts = 1 + (self.max_retries if retries is None else retries)
        for attempt in range(attempts):
            try:
                with anyio.fail_after(self.timeout):
                    await fn(*args)
                return True
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # a sink may raise anything; isolation is the point
                self.stats.errors += 1
                self.stats.last_error = _describe(exc, self.timeout)
                if not _retryable(exc):
                    break
                if attempt + 1 < attempts:
                    delay = min(_BACKOFF_MAX, _BACKOFF_BASE * math.pow(2, attempt))
                    log.debug(
                        "runbus: sink %r %s failed (attempt %d of %d): %s; retrying",
                        self.name,
                        what,
                        attempt + 1,
                        attempts,
                        self.stats.last_error,
                    )
                    await anyio.sleep(delay * (0.5 + random.random()))
        self._stop(what)
        return False

    def _stop(self, what: str) -> None:
        self.failed = True
        self.stats.state = "failed"
        log.warning(
            "runbus: sink %r stopped: %s failed %d time(s), last with: %s. "
            "The run goes on with the other sinks; this sink receives nothing more "
            "(events it misses are counted as dropped in the run's metadata).",
            self.name,
            what,
            self.stats.errors,
            self.stats.last_error,
        )

    async def _close(self) -> None:
        failed_before = self.failed
        if not self.failed:
            await self._attempt("flush", self.sink.flush, retries=0)
        try:
            with anyio.fail_after(self.timeout):
                await self.sink.aclose()
        except Exception as exc:
            if not failed_before:
                log.warning(
                    "runbus: sink %r failed to close: %s", self.name, _describe(exc, self.timeout)
                )
            self.stats.errors += 1
            if isinstance(exc, TimeoutError):
                self.stats.state = "timed out"
                return
        if not self.failed:
            self.stats.state = "closed"


def _retryable(exc: Exception) -> bool:
    """Whether trying again can help: not for a closed sink or a programming error.

    A sink marks its own permanent errors with ``exc.retryable = False``.
    """
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    return not isinstance(exc, SinkClosedError | TypeError | ValueError | NotImplementedError)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {timeout:g} s (settings.sink_timeout)"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, OSError) else text
