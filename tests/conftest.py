"""Shared fixtures: a runs directory per test, a quiet terminal, no runs left behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline import run as run_module

# Environment a developer may have set that would change what a test sees.
_ENV = (
    "RUNBUS_DIR",
    "RUNBUS_MODE",
    "RUNBUS_SERVER",
    "RUNBUS_API_KEY",
    "RUNBUS_NAME_POLICY",
    "RUNBUS_SINKS",
    "RUNBUS_PIPELINE",
)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """Where a test's runs go."""
    return tmp_path


@pytest.fixture
def new_run(runs_dir: Path) -> Callable[..., pipeline.Run]:
    """``pipeline.init`` into this test's runs directory (keyword arguments pass through)."""

    def start(**kwargs: Any) -> pipeline.Run:
        kwargs.setdefault("project", "tests")
        kwargs.setdefault("dir", runs_dir)
        return pipeline.init(**kwargs)

    return start


@pytest.fixture(autouse=True)
def _quiet_and_tidy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Silence the terminal sink and finish any run a test left live."""
    monkeypatch.setenv("RUNBUS_QUIET", "1")
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    yield
    for run in reversed(run_module.live_runs()):
        if run._thread is None:
            # An async run: its event loop ended with the test; only forget it.
            run_module._forget(run)
            continue
        run.finish(timeout=30)
