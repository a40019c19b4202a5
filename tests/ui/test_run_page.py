"""The run page: overview, charts (counts, zoom, x-axis), system, logs, files, media."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from playwright.sync_api import expect
from ui_harness import PANEL, float_attr, int_attr, panel


def open_run(page: Any, seeded: dict[str, Any], tab: str, name: str = "baseline") -> dict[str, Any]:
    run: dict[str, Any] = seeded["runs"][name]
    page.goto(f"/#/p/{seeded['project']}/r/{run['id']}/{tab}")
    expect(page.get_by_test_id(f"tab-{tab}")).to_have_attribute("aria-selected", "true")
    return run


def drawn(page: Any, key: str, within: str = "") -> Any:
    """The panel of ``key``, scrolled into view and drawn."""
    p = panel(page, key, within)
    p.scroll_into_view_if_needed()
    expect(p).to_have_attribute("data-state", "drawn")
    return p


def test_overview_shows_config_summary_metadata(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "overview")
    expect(page.get_by_test_id("run-state")).to_have_text("finished")
    config = page.get_by_test_id("run-config")
    for key, value in run["config"].items():
        expect(config.locator(f'tr[data-key="{key}"]')).to_contain_text(str(value))
    summary = page.get_by_test_id("run-summary")
    loss = summary.locator('tr[data-key="train/loss"] td').last
    expect(loss).not_to_be_empty()
    # Shown rounded to a few significant digits.
    assert float(loss.inner_text()) == pytest.approx(run["last"]["train/loss"], rel=1e-3)
    expect(summary.locator('tr[data-key="epoch"] td').last).to_have_text(str(run["epochs"] - 1))
    # Gathered by the client on its own: where the script ran.
    metadata = page.get_by_test_id("run-metadata")
    expect(metadata.locator('tr[data-key="cwd"]')).to_contain_text(run["cwd"])


def test_tabs_switch_and_follow_the_url(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "overview")
    for tab in ("charts", "system", "logs", "files", "media", "overview"):
        page.get_by_test_id(f"tab-{tab}").click()
        expect(page).to_have_url(re.compile(rf"#/p/ui/r/{run['id']}/{tab}$"))
        expect(page.get_by_test_id(f"tab-{tab}")).to_have_attribute("aria-selected", "true")
        expect(page.locator("[role=tab][aria-selected=true]")).to_have_count(1)


def test_charts_grouped_by_section_with_right_counts(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "charts")
    train = page.locator('section[data-testid=chart-section][data-section="train"]')
    expect(train).to_have_count(1)
    expect(train.locator(PANEL)).to_have_count(3)  # train/loss, train/acc, train/lr
    val = page.locator('section[data-testid=chart-section][data-section="val"]')
    expect(val.locator(PANEL)).to_have_count(2)
    # Media keys are not metrics: they get no chart.
    expect(panel(page, run["image_key"])).to_have_count(0)

    loss = drawn(page, "train/loss")
    assert int_attr(loss, "data-series-count") == 1
    # 3,000 steps are more than the panel has pixels: one point per bucket, fewer than logged.
    assert loss.get_attribute("data-downsampled") == "true"
    assert 0 < int_attr(loss, "data-point-count") < run["steps"]

    acc = drawn(page, "val/acc")
    assert int_attr(acc, "data-series-count") == 1
    assert acc.get_attribute("data-downsampled") == "false"
    assert int_attr(acc, "data-point-count") == run["epochs"]


def test_panels_below_the_fold_wait_until_scrolled_to(page: Any, seeded: dict[str, Any]) -> None:
    # A short window puts the later panels well below the fold (past any preload margin).
    page.set_viewport_size({"width": 1280, "height": 300})
    open_run(page, seeded, "charts")
    expect(page.locator(PANEL).first).to_have_attribute("data-state", "drawn")
    far = page.locator(PANEL).evaluate_all(
        "ps => ps.filter(p => p.getBoundingClientRect().top > 2 * innerHeight)"
        ".map(p => p.dataset.key)"
    )
    assert far, "every panel is near the viewport; the seeded run has too few metrics"
    last = panel(page, far[-1])
    assert last.get_attribute("data-state") == "pending"
    last.scroll_into_view_if_needed()
    expect(last).to_have_attribute("data-state", "drawn")


def drag_across(page: Any, p: Any, start: float, end: float) -> None:
    """Drag across the plot area of panel ``p`` from ``start`` to ``end`` (fractions of width)."""
    over = p.locator(".u-over")
    box = over.bounding_box()
    assert box is not None, "the chart has no plot area"
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * start, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * (start + end) / 2, y, steps=5)
    page.mouse.move(box["x"] + box["width"] * end, y, steps=5)
    page.mouse.up()


def test_zoom_refetches_full_resolution_then_resets(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "charts")
    loss = drawn(page, "train/loss")
    assert loss.get_attribute("data-downsampled") == "true"
    drag_across(page, loss, 0.40, 0.48)
    expect(loss).to_have_attribute("data-downsampled", "false")
    expect(loss).to_have_attribute("data-state", "drawn")
    lo, hi = float_attr(loss, "data-x-min"), float_attr(loss, "data-x-max")
    assert 0 < lo < hi < run["steps"] - 1
    # About 8% of 3,000 steps: full resolution, every logged step in the range.
    assert hi - lo < run["steps"] * 0.2
    assert int_attr(loss, "data-point-count") == math.floor(hi) - math.ceil(lo) + 1

    page.get_by_test_id("reset-zoom").click()
    expect(loss).to_have_attribute("data-downsampled", "true")
    expect(loss).to_have_attribute("data-state", "drawn")
    assert int_attr(loss, "data-point-count") < run["steps"]


def test_x_axis_switch_to_a_step_metric(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "charts")
    axis = page.get_by_test_id("x-axis")
    options = set(axis.locator("option").evaluate_all("os => os.map(o => o.value)"))
    assert {"_step", "_runtime", "_timestamp", "epoch"} <= options
    # Media and non-numeric keys are no x-axis.
    assert run["image_key"] not in options
    loss = drawn(page, "train/loss")
    axis.select_option("epoch")
    # train/loss has a value at the ten steps where an epoch was logged: ten points.
    expect(loss).to_have_attribute("data-point-count", str(run["epochs"]))
    expect(loss).to_have_attribute("data-downsampled", "false")
    axis.select_option("_runtime")
    expect(loss).to_have_attribute("data-downsampled", "true")
    expect(loss).to_have_attribute("data-state", "drawn")


def test_smoothing_and_log_scale_keep_the_series(page: Any, seeded: dict[str, Any]) -> None:
    open_run(page, seeded, "charts")
    loss = drawn(page, "train/loss")
    points = int_attr(loss, "data-point-count")
    page.get_by_test_id("smoothing").fill("0.9")
    page.get_by_test_id("log-scale").check()
    expect(loss).to_have_attribute("data-state", "drawn")
    # The raw line turns faint beside the smoothed one; neither counts as a second series.
    expect(loss).to_have_attribute("data-series-count", "1")
    assert int_attr(loss, "data-point-count") == points


def test_hover_readout_is_synced(page: Any, seeded: dict[str, Any]) -> None:
    open_run(page, seeded, "charts")
    loss = drawn(page, "train/loss")
    acc = drawn(page, "train/acc")
    loss.scroll_into_view_if_needed()
    box = loss.locator(".u-over").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    here = loss.get_by_test_id("hover-readout")
    there = acc.get_by_test_id("hover-readout")
    expect(here).not_to_be_empty()
    expect(there).not_to_be_empty()
    # Both read out the same x (the first number in each readout).
    step = re.search(r"\d+", here.inner_text())
    assert step is not None
    expect(there).to_contain_text(step.group(0))


def test_system_tab_draws_sampled_series(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "system")
    memory = drawn(page, "system/memory/percent", "[data-testid=system-charts]")
    assert int_attr(memory, "data-series-count") == 1
    # One point per sample the client's system sampler took.
    assert int_attr(memory, "data-point-count") == run["memory_samples"] >= 3


def test_logs_mark_stderr_and_search(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "logs")
    logs = page.get_by_test_id("logs")
    lines = logs.locator("div.log-line")
    expect(lines).to_have_count(len(run["stdout"]) + len(run["stderr"]))
    expect(logs.locator("div.log-line.stderr")).to_have_text(run["stderr"])
    expect(logs.locator("div.log-line:not(.stderr)")).to_have_text(run["stdout"])
    numbers = [int(n) for n in lines.evaluate_all("ls => ls.map(l => l.dataset.line)")]
    assert numbers == list(range(1, len(numbers) + 1))

    page.get_by_test_id("logs-search").fill("gradient")
    # Lines that do not match are hidden or the matches are highlighted: either way
    # every visible match holds the term and the stderr lines are what matched.
    visible = logs.locator("div.log-line:visible")
    expect(visible.filter(has_text="gradient")).to_have_count(len(run["stderr"]))
    marked = logs.locator("mark")
    if marked.count() == 0:
        expect(visible).to_have_count(len(run["stderr"]))


def test_files_listed_with_sizes_and_links(page: Any, seeded: dict[str, Any]) -> None:
    open_run(page, seeded, "files")
    table = page.locator("table[data-testid=files-table]")
    images = table.locator('tr[data-path^="media/image/"]')
    expect(images).to_have_count(len(seeded["runs"]["baseline"]["image_widths"]))
    row = images.first
    expect(row.locator("a[download]")).to_have_count(1)
    href = row.locator("a[download]").get_attribute("href")
    assert href
    resp = page.request.get(href)
    assert resp.ok
    assert resp.body()[:8] == b"\x89PNG\r\n\x1a\n"
    size = len(resp.body())
    # A small file's size is shown in bytes.
    expect(row.locator("td")).to_contain_text([f"{size} B"])


def test_media_image_loads_and_steps(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "media")
    # The image's card: its nearest ancestor that also holds a step slider.
    card = page.locator("img[data-testid=media-image]").first.locator(
        "xpath=ancestor::*[.//input[@data-testid='media-step']][1]"
    )
    expect(card.locator("img[data-testid=media-image]")).to_be_visible()
    slider = card.locator("input[type=range][data-testid=media-step]")
    widths = run["image_widths"]
    lo, hi = slider.get_attribute("min") or "0", slider.get_attribute("max") or "0"
    for value, step in ((hi, max(widths, key=int)), (lo, min(widths, key=int))):
        slider.fill(value)
        # The image logged at that step (each step's image has its own width) has loaded.
        page.wait_for_function(
            """([card, w]) => {
                 const i = card.querySelector('img[data-testid=media-image]');
                 return i && i.complete && i.naturalWidth === w;
               }""",
            arg=[card.element_handle(), widths[step]],
        )
        expect(card).to_contain_text(f"step {step}")


def test_media_table_histogram_and_plot(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "media")
    table = page.locator("table[data-testid=media-table]").first
    expect(table).to_be_visible()
    expect(table.locator("th")).to_contain_text(["epoch", "loss", "split"])
    # Sorted by loss, the smallest logged loss comes first, wherever it sat before.
    table.locator('th[data-col="loss"]').click()
    first = table.locator("tbody tr").first.locator("td")
    expect(first.nth(1)).to_have_text(f"{min(run['table_losses']):g}")
    # Every logged row is there, on one page or across the pager's pages.
    losses: list[float] = []
    pager_next = page.get_by_test_id("table-next").first
    while True:
        losses += [float(t) for t in table.locator("tbody tr td:nth-child(2)").all_inner_texts()]
        if not pager_next.count() or pager_next.is_disabled():
            break
        pager_next.click()
    assert losses == sorted(run["table_losses"])
    expect(page.get_by_test_id("media-histogram").first).to_be_visible()
    plot = page.get_by_test_id("media-plot").first
    expect(plot).to_be_visible()
    drawing = plot.locator("canvas, svg.marks")
    expect(drawing.first).to_be_visible()
    box = drawing.first.bounding_box()
    assert box is not None
    assert box["width"] > 50
    assert box["height"] > 50


#: True once a video or audio element has its metadata, or a GIF shown as an image has pixels.
MEDIA_LOADED = """e => e.tagName === 'IMG' ? e.complete && e.naturalWidth > 0
                       : e.readyState >= 1 && !e.error && e.duration > 0"""
#: True once loading ended either way.
MEDIA_SETTLED = f"""e => ({MEDIA_LOADED})(e) || (e.tagName === 'IMG' ? e.complete : !!e.error)"""
MEDIA_STATE = """e => `<${e.tagName.toLowerCase()} src=${e.getAttribute('src')}>: ` +
    (e.tagName === 'IMG' ? `naturalWidth ${e.naturalWidth}`
     : `readyState ${e.readyState}, error ${e.error ? e.error.message : 'none'}`)"""


def assert_loads(page: Any, element: Any) -> None:
    """Wait until a media element has loaded; fail naming the element and its error."""
    page.wait_for_function(MEDIA_SETTLED, arg=element.element_handle())
    if not element.evaluate(MEDIA_LOADED):
        pytest.fail(f"media did not load: {element.evaluate(MEDIA_STATE)}")


def test_media_video_and_audio_play(page: Any, seeded: dict[str, Any]) -> None:
    run = open_run(page, seeded, "media")
    videos = page.get_by_test_id("media-video")
    expect(videos).to_have_count(len(run["video_keys"]))
    # One GIF (pipeline.Video's default format) and one MP4. A GIF cannot play in
    # <video>: shown as an image it is fine, as long as it loads.
    for i in range(len(run["video_keys"])):
        assert_loads(page, videos.nth(i))
    audio = page.locator("audio[data-testid=media-audio]")
    expect(audio).to_have_count(1)
    assert_loads(page, audio)
    assert audio.evaluate("a => a.duration") == pytest.approx(1.0, abs=0.01)
