"""Sinks: what consumes the run's events (disk, stdout, plugins).

Third-party sinks register a factory in the ``runbus.sinks`` entry point group
and are enabled with ``settings={"sinks": ["name"]}`` or ``$RUNBUS_SINKS``.
"""

from sinks.base import Sink, SinkClosedError, SinkFactory

__all__ = ["Sink", "SinkClosedError", "SinkFactory"]
