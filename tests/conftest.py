"""Shared fixtures: a runs directory per test, a quiet terminal, no runs left behind,
and the one way tests reach PostgreSQL.

PostgreSQL is 127.0.0.1:5432, database ``test`` (override with
``RUNBUS_TEST_POSTGRES_DSN``). When it is unreachable the tests that need it
skip, unless ``RUNBUS_TEST_POSTGRES=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Awaitable, Callable, Iterator
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


def _pg_dsns() -> list[str]:
    env = os.environ.get("RUNBUS_TEST_POSTGRES_DSN")
    if env:
        return [env]
    return [
        "postgresql://postgres@127.0.0.1:5432/test",
        f"postgresql://{getpass.getuser()}@127.0.0.1:5432/test",
    ]


async def _pg_connect() -> tuple[Any, str]:
    try:
        import asyncpg
    except ImportError as e:
        reason = f"asyncpg is not installed ({e})"
    else:
        errors = []
        for dsn in _pg_dsns():
            try:
                return await asyncpg.connect(dsn, timeout=5), dsn
            except (OSError, asyncpg.PostgresError) as e:
                errors.append(f"{dsn}: {e}")
        reason = "PostgreSQL unreachable: " + "; ".join(errors)
    if os.environ.get("RUNBUS_TEST_POSTGRES") == "1":
        pytest.fail(f"RUNBUS_TEST_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def pg_connect() -> Callable[[], Awaitable[tuple[Any, str]]]:
    """``await pg_connect()``: ``(asyncpg connection, dsn)``, or a skip (CI: a failure)."""
    return _pg_connect


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
