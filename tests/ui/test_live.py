"""A running run's page updates by itself while the client logs, and stops when it ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from ui_harness import LiveRun, ServerProcess, int_attr, panel

#: Live steps the chart must gain while the test watches (at 10 steps/s, about 2 s of logging).
GROWTH = 20


@pytest.fixture
def live_run(ui_server: ServerProcess, tmp_path: Path) -> Iterator[LiveRun]:
    run = LiveRun(ui_server, tmp_path / "runs", project="live", interval=0.1)
    try:
        yield run
    finally:
        run.kill()


def test_live_chart_grows_then_stops(page: Any, live_run: LiveRun) -> None:
    page.goto(f"/#/p/live/r/{live_run.run_id}/charts")
    expect(page.get_by_test_id("run-state")).to_have_text("running")
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-live", "on")
    loss = panel(page, "train/loss")
    expect(loss).to_have_attribute("data-state", "drawn")
    start = int_attr(loss, "data-point-count")
    # No reload, no click: the page polls and the count climbs as the client logs.
    page.wait_for_function(
        "([p, n]) => Number(p.dataset.pointCount) >= n",
        arg=[loss.element_handle(), start + GROWTH],
    )
    assert live_run.proc.poll() is None, live_run.log()

    assert live_run.finish() == 0, live_run.log()
    expect(page.get_by_test_id("run-state")).to_have_text("finished")
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-live", "off")
    # Once the run has ended, the chart holds every step the server has, without a reload.
    resp = page.request.get(
        f"/api/v1/projects/live/runs/{live_run.run_id}/history?keys=train/loss&buckets=10000"
    )
    assert resp.ok, resp.text()
    logged = len(resp.json()["series"][0]["x"])
    assert logged >= start + GROWTH
    # Fewer points than the panel has pixels: every one is drawn.
    expect(loss).to_have_attribute("data-downsampled", "false")
    expect(loss).to_have_attribute("data-point-count", str(logged))
