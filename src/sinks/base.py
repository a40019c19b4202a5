"""The one protocol every sink implements, and the errors sinks raise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from pipeline.events import Event
from pipeline.runinfo import RunInfo


class SinkClosedError(RuntimeError):
    """Raised by a sink's ``write`` or ``flush`` after ``aclose``."""


@runtime_checkable
class Sink(Protocol):
    """Consumes batches of events. The framework's runner owns batching,
    flushing, retries, backpressure and isolation; a sink only does its I/O.

    Contract (checked by :func:`pipeline.testing.check_sink`):

    - ``open`` is awaited once before anything else.
    - ``write`` receives batches in order; a batch is read-only and may hold
      any event kind, including kinds the sink does not know (ignore those).
    - ``flush`` makes everything written so far durable (or delivered).
    - ``aclose`` flushes and releases resources; a second call is harmless;
      ``write``/``flush`` after it raise :class:`SinkClosedError`.
    - Raising from any method is reported by the runner, which retries
      ``write``/``flush`` with backoff and stops the sink if it keeps failing.
    """

    name: str

    async def open(self, run: RunInfo) -> None:
        """Prepare to receive the run's events."""
        ...

    async def write(self, batch: Sequence[Event]) -> None:
        """Consume one batch of events."""
        ...

    async def flush(self) -> None:
        """Make everything written so far durable."""
        ...

    async def aclose(self) -> None:
        """Flush and release resources."""
        ...


#: What the ``runbus.sinks`` entry point group holds: a callable that builds a
#: sink for a run (it may return None to opt out, e.g. when disabled by settings).
SinkFactory = Callable[[RunInfo], "Sink | None"]
