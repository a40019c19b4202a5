"""What a sink knows about the run it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """Identity and settings of one run, handed to every sink's ``open``."""

    id: str
    name: str
    project: str
    dir: Path
    start_ts: float
    resumed: bool = False
    group: str | None = None
    tags: tuple[str, ...] = ()
    notes: str | None = None
    #: The run's resolved settings (``pipeline.Settings``), for sinks that need them.
    settings: Any = None
    #: Sequence number of the last stored event when resuming (0 for a new run).
    last_seq: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
