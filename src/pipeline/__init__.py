"""runbus: experiment tracking as an asyncio event pipeline.

``run = pipeline.init(project=...)``, ``run.log({...})``, ``run.finish()``;
see the user guide in docs/.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from pipeline import plot
from pipeline.api import Api
from pipeline.launch import init
from pipeline.media.audio import Audio
from pipeline.media.histogram import Histogram
from pipeline.media.html import Html
from pipeline.media.image import Image
from pipeline.media.table import Table
from pipeline.media.video import Video
from pipeline.names import NameWarning
from pipeline.reader import RunData, read_run
from pipeline.run import (
    Config,
    Run,
    RunFinishedError,
    SummaryView,
    current_run,
)
from pipeline.runner import SinkSpec
from pipeline.settings import Settings
from pipeline.steps import StepWarning

__all__ = [
    "Api",
    "Audio",
    "Config",
    "Histogram",
    "Html",
    "Image",
    "NameWarning",
    "Run",
    "RunData",
    "RunFinishedError",
    "Settings",
    "SinkSpec",
    "StepWarning",
    "SummaryView",
    "Table",
    "Video",
    "__version__",
    "current_run",
    "define_metric",
    "finish",
    "flush",
    "init",
    "log",
    "plot",
    "read_run",
]


def _current(what: str) -> Run:
    run = current_run()
    if run is None:
        raise RuntimeError(f"pipeline.{what}() needs a run: call pipeline.init() first")
    return run


def log(data: Any, step: int | None = None, commit: bool | None = None) -> None:
    """``run.log`` on the current run (the latest unfinished ``init()``)."""
    _current("log").log(data, step=step, commit=commit)


def define_metric(name: str, step_metric: str | None = None, **kwargs: Any) -> Any:
    """``run.define_metric`` on the current run."""
    return _current("define_metric").define_metric(name, step_metric, **kwargs)


def flush(timeout: float | None = None) -> bool:
    """``run.flush`` on the current run."""
    return _current("flush").flush(timeout)


def finish(exit_code: int = 0) -> None:
    """``run.finish`` on the current run; does nothing when no run is live."""
    run = current_run()
    if run is not None:
        run.finish(exit_code=exit_code)
