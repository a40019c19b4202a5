"""runbus: experiment tracking as an asyncio event pipeline.

``run = pipeline.init(project=...)``, ``run.log({...})``, ``run.finish()``;
see the user guide in docs/.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
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
    from pipeline.run import Config, Run, RunFinishedError, SummaryView, current_run
    from pipeline.runner import SinkSpec
    from pipeline.settings import Settings
    from pipeline.steps import StepWarning

# Public names load on first use: the server and the CLI import small pieces
# (pipeline.jsoncodec, pipeline.reader) and should not pay for the whole SDK
# (anyio, the media types, the run machinery) at start.
_LAZY = {
    "plot": "pipeline.plot",
    "Api": "pipeline.api",
    "init": "pipeline.launch",
    "Audio": "pipeline.media.audio",
    "Histogram": "pipeline.media.histogram",
    "Html": "pipeline.media.html",
    "Image": "pipeline.media.image",
    "Table": "pipeline.media.table",
    "Video": "pipeline.media.video",
    "NameWarning": "pipeline.names",
    "RunData": "pipeline.reader",
    "read_run": "pipeline.reader",
    "Config": "pipeline.run",
    "Run": "pipeline.run",
    "RunFinishedError": "pipeline.run",
    "SummaryView": "pipeline.run",
    "current_run": "pipeline.run",
    "SinkSpec": "pipeline.runner",
    "Settings": "pipeline.settings",
    "StepWarning": "pipeline.steps",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module = importlib.import_module(target)
    value = module if name == "plot" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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


def _current_run() -> Run | None:
    # A dict lookup once loaded: the module-level log() stays as cheap as run.log().
    fn = globals().get("current_run") or __getattr__("current_run")
    run: Run | None = fn()
    return run


def _current(what: str) -> Run:
    run = _current_run()
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
    run = _current_run()
    if run is not None:
        run.finish(exit_code=exit_code)
