"""Test helpers for users and sink authors: in-memory, failing and slow sinks,
and :func:`check_sink`, the compliance suite every sink should pass.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from pipeline import events as ev
from pipeline.runinfo import RunInfo
from sinks.base import Sink, SinkClosedError

#: Settings for a test run: nothing printed and no automatic sources (system
#: metrics, console capture, git, requirements, host metadata), so a test sees
#: only what it logs. ``pipeline.init(..., settings=QUIET_SETTINGS)``.
QUIET_SETTINGS: dict[str, Any] = {
    "quiet": True,
    "system": False,
    "console": "off",
    "git": False,
    "requirements": False,
    "metadata": False,
}


class MemorySink:
    """Keeps every event it receives, in order; thread-safe to inspect."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.events: list[ev.Event] = []
        self.flushes = 0
        self.opened: RunInfo | None = None
        self.closed = False
        self._lock = threading.Lock()

    async def open(self, run: RunInfo) -> None:
        """Remember the run."""
        self.opened = run

    async def write(self, batch: Sequence[ev.Event]) -> None:
        """Append the batch."""
        if self.closed:
            raise SinkClosedError(f"sink {self.name!r} is closed")
        with self._lock:
            self.events.extend(batch)

    async def flush(self) -> None:
        """Count the flush."""
        if self.closed:
            raise SinkClosedError(f"sink {self.name!r} is closed")
        self.flushes += 1

    async def aclose(self) -> None:
        """Mark closed."""
        self.closed = True

    def of_kind(self, kind: str) -> list[ev.Event]:
        """The events of one kind received so far."""
        with self._lock:
            return [e for e in self.events if e.kind == kind]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """History rows received, as ``{"_step": ..., **data}``."""
        return [
            {"_step": e.step, **e.data} for e in self.of_kind("row") if isinstance(e, ev.HistoryRow)
        ]


class FailingSink(MemorySink):
    """A sink that raises from chosen methods, for isolation tests.

    ``fail_on`` names the methods that raise (``open``, ``write``, ``flush``,
    ``aclose``); ``times`` limits how many calls fail before it recovers
    (None: it never recovers).
    """

    def __init__(
        self,
        fail_on: Sequence[str] = ("write",),
        *,
        times: int | None = None,
        exc: Callable[[], BaseException] = lambda: OSError("injected failure"),
        name: str = "failing",
    ) -> None:
        super().__init__(name)
        unknown = set(fail_on) - {"open", "write", "flush", "aclose"}
        if unknown:
            raise ValueError(f"FailingSink(fail_on=...): unknown method(s) {sorted(unknown)}")
        self.fail_on = set(fail_on)
        self.remaining = times
        self.exc = exc
        self.failures = 0

    def _maybe_fail(self, method: str) -> None:
        if method not in self.fail_on:
            return
        if self.remaining is not None:
            if self.remaining <= 0:
                return
            self.remaining -= 1
        self.failures += 1
        raise self.exc()

    async def open(self, run: RunInfo) -> None:
        """Fail if asked, else remember the run."""
        self._maybe_fail("open")
        await super().open(run)

    async def write(self, batch: Sequence[ev.Event]) -> None:
        """Fail if asked, else append."""
        self._maybe_fail("write")
        await super().write(batch)

    async def flush(self) -> None:
        """Fail if asked, else count."""
        self._maybe_fail("flush")
        await super().flush()

    async def aclose(self) -> None:
        """Fail if asked, else close."""
        self._maybe_fail("aclose")
        await super().aclose()


class SlowSink(MemorySink):
    """A sink whose writes take ``delay`` seconds (or block until released)."""

    def __init__(self, delay: float = 0.0, *, name: str = "slow") -> None:
        super().__init__(name)
        self.delay = delay
        self.gate = threading.Event()
        if delay >= 0:
            self.gate.set()

    async def write(self, batch: Sequence[ev.Event]) -> None:
        """Wait, then append."""
        if self.delay > 0:
            await anyio.sleep(self.delay)
        if not self.gate.is_set():
            # Released from the test's thread, so wait for it off the loop.
            await anyio.to_thread.run_sync(self.gate.wait)
        await super().write(batch)

    def release(self) -> None:
        """Let blocked writes through (for ``delay < 0``: block until released)."""
        self.gate.set()


def sample_events(run_id: str = "compliance") -> list[ev.Event]:
    """One event of every stored kind, with awkward values (NaN, inf, unicode)."""
    now = time.time()
    return [
        ev.Metadata(run_id, 1, now, {"id": run_id, "name": "sample", "state": "running"}),
        ev.ConfigUpdate(run_id, 2, now, {"lr": 0.001, "nested": {"a": [1, 2]}}),
        ev.MetricDef(run_id, 3, now, "val/*", "epoch", True, False, ("max",), "maximize"),
        ev.HistoryRow(run_id, 4, now, 0, 0.5, {"loss": 0.5, "nan": math.nan}, True),
        ev.PartialRow(run_id, 5, now, 1, 0.6, {"loss": math.inf}, True),
        ev.HistoryRow(run_id, 6, now, 1, 0.7, {"loss": -math.inf, "txt": "héllo ✓"}, True),
        ev.Refused(run_id, 7, now, 0, 2, {"loss": 1.0}, "step 0 is lower than the current step 2"),
        ev.SummaryUpdate(run_id, 8, now, {"best": 0.9}, ()),
        ev.Summary(run_id, 9, now, {"loss": -math.inf, "best": 0.9}),
        ev.Stats(run_id, 10, now, 0.8, {"system/cpu": 12.5}),
        ev.Output(run_id, 11, now, "stdout", "epoch 1\n"),
        ev.FileSaved(run_id, 12, now, "media/a.png", "0" * 64, 10),
        ev.Metadata(run_id, 13, now, {"state": "finished", "exit_code": 0}),
        ev.Finish(run_id, 14, now, 0),
    ]


async def check_sink(
    factory: Callable[[RunInfo], Sink | Awaitable[Sink]], directory: Path | None = None
) -> None:
    """Run the sink contract against sinks made by ``factory``; raise AssertionError on a breach.

    Checks: ``open`` then writes of every event kind (including one it cannot
    know) then ``flush`` and ``aclose`` succeed; an empty batch and a flush with
    nothing written are fine; ``aclose`` twice is harmless; ``write`` and
    ``flush`` after ``aclose`` raise ``SinkClosedError``; the sink does not keep
    a reference that changes when the caller's batch list is mutated afterwards.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(directory or tmp)
        info = RunInfo(
            id="compliance",
            name="compliance",
            project="compliance",
            dir=base / "run-20000101_000000-compliance",
            start_ts=time.time(),
        )
        made = factory(info)
        sink = await made if isinstance(made, Awaitable) else made
        assert isinstance(sink, Sink), f"{sink!r} does not implement the Sink protocol"
        assert isinstance(sink.name, str), "a sink's name must be a str"
        assert sink.name, "a sink needs a non-empty name"
        await sink.open(info)
        await sink.flush()  # nothing written yet
        await sink.write([])
        batch: list[Any] = list(sample_events())
        await sink.write(batch)
        batch.clear()  # the runner may reuse its lists; a sink must not depend on them
        unknown = _FutureEvent("compliance", 99, time.time(), "from a newer runbus")
        await sink.write([unknown])  # type: ignore[list-item]
        await sink.flush()
        await sink.aclose()
        await sink.aclose()
        calls: list[Callable[[], Awaitable[None]]] = [
            lambda: sink.write(sample_events()[:1]),
            sink.flush,
        ]
        for call in calls:
            try:
                await call()
            except SinkClosedError:
                continue
            raise AssertionError(
                f"{sink.name}: write/flush after aclose must raise SinkClosedError"
            )


class _FutureEvent:
    """An event kind this version does not know; sinks must ignore it."""

    __slots__ = ("run_id", "seq", "text", "ts")
    kind = "from_the_future"

    def __init__(self, run_id: str, seq: int, ts: float, text: str) -> None:
        self.run_id, self.seq, self.ts, self.text = run_id, seq, ts, text
