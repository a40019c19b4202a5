"""What the browser tests and ``bench/ui_page.py`` share: a ``runbus server`` child
process, seeded runs, and Debian's Chromium driven headless by Playwright.

Playwright's own browser download does not work everywhere runbus is tested,
so the browser is the system ``chromium`` (``apt-get install chromium``),
never one that ``playwright install`` fetched.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SEED_SCRIPT = Path(__file__).with_name("seed_runs.py")
#: What a browser test does when Chromium or Playwright is missing: skip, unless this is "1" (CI).
BROWSER_ENV = "RUNBUS_TEST_BROWSER"


def chromium_path() -> str | None:
    """The system Chromium, or None."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def browser_missing() -> str | None:
    """Why no browser test can run here (Playwright or Chromium missing), or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"Playwright for Python is not installed ({e}); pip install -e '.[dev]'"
    if chromium_path() is None:
        return (
            "no system Chromium (apt-get install chromium); Playwright's own download is not used"
        )
    return None


def ui_assets_missing() -> str | None:
    """Why the server cannot serve the UI's third-party files (not built yet), or None."""
    try:
        from server.ui import missing_vendor_files
    except ImportError as e:
        return f"this checkout has no web UI ({e})"
    missing = missing_vendor_files()
    if missing:
        return f"the UI's vendored assets are not built ({', '.join(missing)}): run `make ui`"
    return None


def child_env() -> dict[str, str]:
    """The environment of a child that imports runbus from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    for var in ("RUNBUS_SERVER", "RUNBUS_API_KEY", "RUNBUS_MODE", "RUNBUS_DIR", "RUNBUS_QUIET"):
        env.pop(var, None)
    return env


class _Drain:
    """Reads a child's pipe on a thread, so the child never blocks on a full pipe."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)
            self.queue.put(line)
        self.queue.put(None)

    def join(self, timeout: float) -> None:
        """Wait until the stream has been read to its end."""
        self._thread.join(timeout)

    def next_line(self, timeout: float) -> str | None:
        """The next line within ``timeout`` s; None at end of stream. Raises queue.Empty."""
        return self.queue.get(timeout=timeout)


class ServerProcess:
    """``runbus server --port 0`` as a child process: its URL, its admin key, its log.

    On a fresh ``data`` directory the key is the one the server prints at its first
    start; over a directory it started on before, pass that ``key`` again.
    """

    def __init__(self, data: Path, *, key: str | None = None, start_timeout: float = 60.0) -> None:
        cmd = [sys.executable, "-m", "pipeline.cli", "server", "--port", "0", "--data", str(data)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env(),
        )
        self._out = _Drain(self.proc.stdout)
        self._err = _Drain(self.proc.stderr)
        self.url = ""
        self.key = key or ""
        try:
            # The first start prints the key and login URL; "listening on" comes last.
            while not self.url:
                line = self._out.next_line(start_timeout)
                if line is None:
                    raise RuntimeError(f"runbus server exited while starting:\n{self.log()}")
                login = re.search(r"/login\?token=(\S+)", line)
                if login:
                    self.key = login.group(1)
                listening = re.search(r"listening on (http://\S+)", line)
                if listening:
                    self.url = listening.group(1)
        except queue.Empty:
            self.stop()
            raise RuntimeError(
                f"runbus server printed no URL and key within {start_timeout:.0f} s:\n{self.log()}"
            ) from None
        if not self.key:
            self.stop()
            raise RuntimeError(f"{data} was used before: pass the admin key it printed then")

    def log(self) -> str:
        """Everything the server printed so far (for failure messages)."""
        return "".join(self._out.lines) + "".join(self._err.lines)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def client_command(
    server: ServerProcess, runs_dir: Path, *args: str
) -> tuple[list[str], dict[str, str]]:
    """Command line and environment to run ``seed_runs.py`` as a training script in ``runs_dir``.

    The script is copied there and run by its bare name, and the server and key go
    through ``RUNBUS_SERVER``/``RUNBUS_API_KEY``: the run's recorded command line
    (shown on the overview page and in the screenshots) holds neither a checkout
    path nor the key.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SEED_SCRIPT, runs_dir / SEED_SCRIPT.name)
    env = child_env() | {"RUNBUS_SERVER": server.url, "RUNBUS_API_KEY": server.key}
    return [sys.executable, SEED_SCRIPT.name, "--dir", ".", *args], env


def _run_client(server: ServerProcess, runs_dir: Path, *args: str) -> str:
    """Run ``seed_runs.py`` with ``args`` in ``runs_dir`` to its end; return its stdout."""
    cmd, env = client_command(server, runs_dir, *args)
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=runs_dir, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"seeding runs failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
            f"server log:\n{server.log()}"
        )
    return done.stdout


def seed_runs(server: ServerProcess, runs_dir: Path, project: str = "ui") -> dict[str, Any]:
    """Log the seeded runs (``seed_runs.py``) to ``server``; return the manifest."""
    out = f"{project}-manifest.json"
    _run_client(server, runs_dir, "--project", project, "--out", out)
    manifest: dict[str, Any] = json.loads((runs_dir / out).read_text())
    return manifest


def seed_git_run(server: ServerProcess, runs_dir: Path, project: str) -> str:
    """Log one finished run with git probing on from ``runs_dir``; return its id.

    ``runs_dir`` should lie inside a git repository with uncommitted changes
    to a tracked file: the client waits for the git state and ``diff.patch``.
    """
    return _run_client(server, runs_dir, "--git", "--project", project).strip()


class LiveRun:
    """A client child process logging one running run until :meth:`finish`."""

    def __init__(
        self,
        server: ServerProcess,
        runs_dir: Path,
        *,
        project: str,
        interval: float = 0.05,
        keys: str = "train/loss",
    ) -> None:
        cmd, env = client_command(
            server,
            runs_dir,
            "--live",
            "--project",
            project,
            "--interval",
            str(interval),
            "--keys",
            keys,
        )
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=runs_dir,
        )
        self._out = _Drain(self.proc.stdout)
        self._err = _Drain(self.proc.stderr)
        try:
            first = self._out.next_line(60)
        except queue.Empty:
            first = None
        if not first:
            self.kill()
            raise RuntimeError(f"the live run did not start:\n{self.log()}")
        self.run_id = first.strip()
        self.project = project
        self._wait_on_server(server)

    def _wait_on_server(self, server: ServerProcess, timeout: float = 60.0) -> None:
        """Return once the server has the run (the client creates it at its first upload)."""
        url = f"{server.url}/api/v1/projects/{self.project}/runs/{self.run_id}/last_seq"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {server.key}"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(request, timeout=10) as resp:
                if json.loads(resp.read())["last_seq"] > 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the live run never reached the server:\n{self.log()}")

    def log(self) -> str:
        """What the client printed (for failure messages)."""
        return "".join(self._out.lines) + "".join(self._err.lines)

    def logged(self) -> tuple[int, float]:
        """Steps logged and seconds spent, as the client reports once finished."""
        found = re.search(r"logged (\d+) steps in ([\d.]+) s", self.log())
        if found is None:
            raise RuntimeError(f"the live run reported no totals:\n{self.log()}")
        return int(found.group(1)), float(found.group(2))

    def finish(self, timeout: float = 60) -> int:
        """Close the client's stdin: it finishes the run and exits; return its exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        code = self.proc.wait(timeout)
        self._out.join(10)
        self._err.join(10)
        return code

    def kill(self) -> None:
        """Stop the client at once (cleanup after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def launch_chromium(playwright: Any) -> Any:
    """Headless system Chromium through Playwright (never a downloaded browser)."""
    path = chromium_path()
    if path is None:
        raise RuntimeError(browser_missing() or "no Chromium")
    # --no-sandbox: CI runs as root, where Chromium refuses its sandbox; containers
    # often have a tiny /dev/shm.
    return playwright.chromium.launch(
        executable_path=path, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
    )


def login(context: Any, server: ServerProcess) -> None:
    """Give a browser context the server's login cookie via ``/login?token=``."""
    page = context.new_page()
    try:
        page.goto(f"{server.url}/login?token={server.key}")
    finally:
        page.close()


# ----------------------------------------------------------------- page helpers (DOM contract)

PANEL = "div[data-testid=chart-panel]"


def panel(page: Any, key: str, within: str = "") -> Any:
    """The chart panel of metric ``key`` (optionally under the CSS scope ``within``)."""
    return page.locator(f'{within} {PANEL}[data-key="{key}"]'.strip())


def int_attr(locator: Any, name: str) -> int:
    """An integer attribute of one element (raises if missing or not an integer)."""
    value = locator.get_attribute(name)
    if value is None:
        raise AssertionError(f"{name} is missing on {locator}")
    return int(value)


def float_attr(locator: Any, name: str) -> float:
    """A numeric attribute of one element (raises if missing or not a number)."""
    value = locator.get_attribute(name)
    if value is None:
        raise AssertionError(f"{name} is missing on {locator}")
    return float(value)
