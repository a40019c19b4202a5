"""Attaching the automatic sources to a run, by its settings.

Each source can be turned off by a setting (and its environment variable):
``system`` (and ``gpu``), ``console``, ``git``, ``requirements``, ``metadata``.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.run import Run


#: Seconds finish() waits for the probe to complete before cancelling it.
PROBE_GRACE = 2.0


def attach_sources(run: Run) -> None:
    """Start console capture now and register the async sources with the bus."""
    settings = run.settings
    info = run._info
    if settings.console != "off":
        from sources.console import ConsoleCapture

        capture = ConsoleCapture(
            info.id, run._put, mode=settings.console, max_line=settings.console_max_line
        )
        if capture.start():
            run._add_closer(capture.stop)
    if settings.system:
        from sources.system import run_sampler

        run._bus.add_source(
            functools.partial(
                run_sampler,
                run=info,
                interval=settings.system_interval,
                process_tree=settings.system_process_tree,
                gpu=settings.gpu,
            )
        )
    if settings.git or settings.requirements or settings.metadata:
        from sources.probe import run_probe

        run._bus.add_source(
            functools.partial(
                run_probe,
                run=info,
                git=settings.git,
                requirements=settings.requirements,
                metadata=settings.metadata,
                diff_limit=settings.diff_limit,
                # The directory at init(): a program may chdir right after.
                cwd=_cwd(),
            ),
            # A short run still gets its git state and requirements.
            grace=PROBE_GRACE,
        )


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the working directory was removed: the probe skips git
        return None
