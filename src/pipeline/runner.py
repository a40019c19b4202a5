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
MAX_WRITE = 4096
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


def _is_control(item: ev.Item) -> bool:
    return item.kind in ("flush", "barrier", "stop")


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
        self._send: MemoryObjectSendStream[list[ev.Item]]
        self._receive: MemoryObjectReceiveStream[list[ev.Item]]
        self._send, self._receive = anyio.create_memory_object_stream[list[ev.Item]](size)
        self.failed = False

    @property
    def name(self) -> str:
        """The sink's name."""
        return self.stats.name

    # -- producer side (the bus) ---------------------------------------------

    async def offer(self, batch: list[ev.Item]) -> None:
        """Queue a batch by this sink's policy; never blocks on a stopped sink."""
        if self.failed:
            self._discard(batch)
            return
        if self.policy == "block":
            await self._send.send(batch)
            return
        try:
            self._send.send_nowait(batch)
        except anyio.WouldBlock:
            # A sink that cannot keep up is not waited for, not even by a flush:
            # what it dropped it cannot flush anyway.
            self._discard(batch)

    def close_input(self) -> None:
        """End of stream: the runner drains what is queued, then closes the sink."""
        self._send.close()

    def _discard(self, batch: list[ev.Item]) -> None:
        # Dropped data cannot be flushed: a flush waiting on this sink learns so.
        for item in batch:
            if item.kind == "flush" and item.completion is not None:  # type: ignore[union-attr]
                item.completion.done(ok=False)  # type: ignore[union-attr]
            elif not _is_control(item):
                self.stats.dropped += 1

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
                async for batch in self._receive:
                    if self.failed:
                        self._discard(batch)
                        continue
                    await self._process(self._coalesce(batch))
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    def _coalesce(self, batch: list[ev.Item]) -> list[ev.Item]:
        if len(batch) >= MAX_WRITE:
            return batch
        merged: list[ev.Item] | None = None
        while True:
            try:
                more = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            if merged is None:
                merged = list(batch)
            merged.extend(more)
            if len(merged) >= MAX_WRITE:
                break
        return batch if merged is None else merged

    async def _process(self, batch: list[ev.Item]) -> None:
        start = 0
        for i, item in enumerate(batch):
            if item.kind == "flush":
                if not self.failed and i > start:
                    await self._write(batch[start:i])
                start = i + 1
                flushed = not self.failed and await self._attempt("flush", self.sink.flush)
                if item.completion is not None:  # type: ignore[union-attr]
                    item.completion.done(ok=flushed)  # type: ignore[union-attr]
            elif item.kind in ("barrier", "stop"):
                if not self.failed and i > start:
                    await self._write(batch[start:i])
                start = i + 1
        if self.failed:
            self._discard(batch[start:])
        elif start < len(batch):
            await self._write(batch if start == 0 else batch[start:])

    async def _write(self, events: list[ev.Item]) -> None:
        if await self._attempt("write", self.sink.write, events):
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
