"""Run a snippet of Python in a fresh interpreter against the checkout's src/."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_python(
    code: str, *argv: str, extra_path: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) with ``argv`` as ``sys.argv[1:]``, quiet; wait for it to end."""
    full = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (SRC, extra_path) if p))
    full["RUNBUS_QUIET"] = "1"
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *argv],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
