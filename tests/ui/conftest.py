"""Browser test fixtures: one ``runbus server`` child with seeded runs per session,
and headless system Chromium through Playwright's sync API.

Without Playwright, Chromium or the UI's built assets the tests skip, naming
what to install or build, unless ``RUNBUS_TEST_BROWSER=1`` (CI), where they
fail instead. Every page a test opens is logged in through ``/login?token=``;
a JavaScript error on the page fails the test that caused it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from ui_harness import (
    BROWSER_ENV,
    ServerProcess,
    browser_missing,
    launch_chromium,
    login,
    seed_runs,
    ui_assets_missing,
)

#: How long a UI expectation may take before it fails (a deadline, not a speed goal:
#: the machine running the tests may be slow and busy).
DEADLINE_MS = 20_000
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
def _browser_available() -> None:
    reason = browser_missing() or ui_assets_missing()
    if reason is None:
        from playwright.sync_api import expect

        expect.set_options(timeout=DEADLINE_MS)
        return
    if os.environ.get(BROWSER_ENV) == "1":
        pytest.fail(f"{BROWSER_ENV}=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ui_server(
    _browser_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A ``runbus server`` child on a free loopback port, over SQLite in a temp dir."""
    server = ServerProcess(tmp_path_factory.mktemp("ui-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seeded(ui_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The manifest of the runs logged to ``ui_server`` by ``seed_runs.py`` (project ``ui``)."""
    return seed_runs(ui_server, tmp_path_factory.mktemp("ui-runs"))


@pytest.fixture(scope="module")
def browser(_browser_available: None) -> Iterator[Any]:
    """Headless system Chromium, shared by a module's tests (each gets its own context).

    Per module, not per session: while Playwright's sync API is started, its event
    loop counts as running on this thread, so asyncio tests in other modules must
    not run before it stops.
    """
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = launch_chromium(pw)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        pw.stop()


@pytest.fixture
def anon_page(browser: Any, ui_server: ServerProcess) -> Iterator[Any]:
    """A page with no login cookie; JavaScript errors on it fail the test."""
    context = browser.new_context(viewport=VIEWPORT, base_url=ui_server.url)
    context.set_default_timeout(DEADLINE_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(anon_page: Any, ui_server: ServerProcess, seeded: dict[str, Any]) -> Any:
    """A logged-in page, with the seeded runs on the server."""
    login(anon_page.context, ui_server)
    return anon_page
