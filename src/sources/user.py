"""The user's log calls as an event source.

The calling thread only appends to a deque (~0.1 µs). It does not wake the
pipeline: measured here, waking a sleeping pipeline thread from a busy caller
cost ~70 µs a call at a training loop's cadence (the wake-up hands the GIL to
the loop thread), against ~1 µs for the whole ``log()`` otherwise. Instead the
pipeline looks every ``POLL`` seconds when idle, and controls that someone
waits on (flush, finish, a summary read) wake it at once. The pipeline drains
the deque in batches. When the backlog passes ``max_backlog`` a plain
thread waits for the pipeline to catch up, which bounds memory; code running
on the pipeline's own loop never waits (it would wait for itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

import anyio
import anyio.lowlevel

from pipeline import events as ev

#: Seconds an idle pipeline waits before it looks for new calls by itself.
POLL = 0.05
#: Items handed to the stages per batch at most.
MAX_BATCH = 512
#: While data keeps coming, the intake waits this long between drains, so the
#: caller never pays for a wake-up and the stages see big batches.
LINGER = 0.002


class CallSource:
    """Hand-off buffer between ``run.log()`` callers and the pipeline."""

    def __init__(self, max_backlog: int, max_media_bytes: int = 256 * 1024 * 1024) -> None:
        self._buf: deque[ev.Item] = deque()
        self.max_backlog = max_backlog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self.asleep = False
        self._room = threading.Condition(threading.Lock())
        self._waiting = 0
        self.closed = False
        self.max_media_bytes = max_media_bytes
        #: Bytes of media copies handed over and not yet encoded.
        self.media_bytes = 0
        #: Set before the pipeline thread starts: callers on other threads may then
        #: wait for room even before the pipeline's loop is up.
        self.threaded = False

    # -- caller side -----------------------------------------------------------

    def put(self, item: ev.Item) -> None:
        """Hand one item to the pipeline (any thread).

        The item is appended before any wait for room: the console capture
        relies on that to hand lines over without losing them.
        """
        buf = self._buf
        buf.append(item)
        if len(buf) > self.max_backlog:
            self._wait_for_room()

    def put_media(self, item: ev.Item, nbytes: int) -> None:
        """Hand over a call holding media copies of ``nbytes`` bytes.

        Media are bounded by bytes as well as by calls: a plain thread waits
        while more than ``max_media_bytes`` of copies wait for encoding.
        """
        with self._room:
            self.media_bytes += nbytes
        self._buf.append(item)
        if self.media_bytes > self.max_media_bytes or len(self._buf) > self.max_backlog:
            self._wait_for_room()

    def media_done(self, nbytes: int) -> None:
        """The pipeline has encoded (and dropped its copies of) ``nbytes`` of media."""
        with self._room:
            self.media_bytes -= nbytes
            if self._waiting:
                self._room.notify_all()

    def put_urgent(self, item: ev.Item) -> None:
        """Hand over a control item and make sure the pipeline looks now."""
        self._buf.append(item)
        self._wakeup()

    def _wakeup(self) -> None:
        self.asleep = False
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not started yet: it drains on start
        if threading.get_ident() == self._loop_thread:
            wake.set()
        else:
            # A closed loop means the run has ended: nothing to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def _wait_for_room(self) -> None:
        me = threading.get_ident()
        if me == self._loop_thread or (self._loop_thread is None and not self.threaded):
            return  # the pipeline runs on this thread's loop: waiting would deadlock
        with self._room:
            self._waiting += 1
            try:
                self._wakeup()
                while not self.closed and (
                    len(self._buf) > self.max_backlog // 2
                    or self.media_bytes > self.max_media_bytes
                ):
                    self._room.wait(0.5)
            finally:
                self._waiting -= 1

    # -- pipeline side ---------------------------------------------------------

    def attach(self) -> None:
        """Bind to the running loop (called from the pipeline's task)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()

    async def next_batch(self) -> list[ev.Item]:
        """Wait for items and return up to ``MAX_BATCH`` of them, in order.

        A batch ends after a ``Stop``; nothing after it is returned.
        """
        buf = self._buf
        assert self._wake is not None
        if not buf:
            self._wake.clear()
            self.asleep = True
            if not buf:  # re-check: an urgent put may have raced the clear
                with anyio.move_on_after(POLL):
                    await self._wake.wait()
            self.asleep = False
        else:
            await anyio.lowlevel.checkpoint()  # let the loop breathe between batches
        batch: list[ev.Item] = []
        popleft = buf.popleft
        for _ in range(min(len(buf), MAX_BATCH)):
            item = popleft()
            batch.append(item)
            if item.kind == "stop":
                break
        if self._waiting:
            with self._room:
                self._room.notify_all()
        return batch

    async def linger(self) -> None:
        """Pause briefly while a steady stream fills the next batch."""
        if len(self._buf) < MAX_BATCH:
            await anyio.sleep(LINGER)

    def close(self) -> None:
        """Release any caller waiting for room."""
        self.closed = True
        with self._room:
            self._room.notify_all()
