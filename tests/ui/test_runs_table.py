"""The projects list, login and the runs table: sort, filter, columns, compare."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from playwright.sync_api import expect
from ui_harness import PANEL, ServerProcess, int_attr

ROWS = "table[data-testid=runs-table] tbody tr[data-run-id]"
NAMES = f"{ROWS} a[data-testid=run-link]"


def open_table(page: Any, project: str = "ui") -> None:
    page.goto(f"/#/p/{project}")
    expect(page.locator("table[data-testid=runs-table]")).to_be_visible()


def names_where(seeded: dict[str, Any], keep: Any) -> set[str]:
    return {name for name, run in seeded["runs"].items() if keep(run)}


def apply_filter(page: Any, text: str) -> None:
    box = page.get_by_test_id("runs-filter")
    box.fill(text)
    box.press("Enter")


def test_login_form_then_projects(anon_page: Any, ui_server: ServerProcess) -> None:
    anon_page.goto("/")
    form = anon_page.locator("form[data-testid=login-form]")
    expect(form).to_be_visible()
    # The page tells a user where the key comes from.
    expect(form).to_contain_text("runbus server")
    form.get_by_test_id("login-key").fill(ui_server.key)
    form.locator("[type=submit]").click()
    expect(anon_page.locator("form[data-testid=login-form]")).to_have_count(0)
    expect(anon_page.get_by_test_id("project-link").first).to_be_visible()


def test_wrong_key_keeps_the_login_form(anon_page: Any) -> None:
    anon_page.goto("/")
    form = anon_page.locator("form[data-testid=login-form]")
    form.get_by_test_id("login-key").fill("not-a-key")
    form.locator("[type=submit]").click()
    expect(anon_page.locator("form[data-testid=login-form]")).to_be_visible()
    expect(anon_page.get_by_test_id("project-link")).to_have_count(0)


def test_project_link_opens_its_runs(page: Any, seeded: dict[str, Any]) -> None:
    page.goto("/#/")
    link = page.get_by_test_id("project-link").filter(has_text=re.compile(r"^ui$"))
    expect(link).to_have_count(1)
    link.click()
    expect(page).to_have_url(re.compile(r"#/p/ui$"))
    expect(page.locator(ROWS)).to_have_count(len(seeded["runs"]))
    expect(page.get_by_test_id("runs-total")).to_contain_text(str(len(seeded["runs"])))
    ids = {run["id"] for run in seeded["runs"].values()}
    assert {r.get_attribute("data-run-id") for r in page.locator(ROWS).all()} == ids


def test_rows_show_state_and_tags(page: Any, seeded: dict[str, Any]) -> None:
    open_table(page)
    for run in seeded["runs"].values():
        row = page.locator(f'{ROWS}[data-run-id="{run["id"]}"]')
        expect(row).to_contain_text(run["state"])
        for tag in run["tags"]:
            expect(row).to_contain_text(tag)


def test_sort_by_config_then_reverse(page: Any, seeded: dict[str, Any]) -> None:
    open_table(page)
    by_lr = sorted(seeded["runs"], key=lambda n: seeded["runs"][n]["config"]["lr"])
    header = page.locator('th[data-col="config.lr"]')
    header.click()
    expect(header).to_have_attribute("aria-sort", "ascending")
    expect(page.locator(NAMES)).to_have_text(by_lr)
    header.click()
    expect(header).to_have_attribute("aria-sort", "descending")
    expect(page.locator(NAMES)).to_have_text(by_lr[::-1])


def test_sort_by_summary(page: Any, seeded: dict[str, Any]) -> None:
    open_table(page)
    by_loss = sorted(seeded["runs"], key=lambda n: seeded["runs"][n]["last"]["train/loss"])
    header = page.locator('th[data-col="summary.train/loss"]')
    header.click()
    expect(header).to_have_attribute("aria-sort", "ascending")
    expect(page.locator(NAMES)).to_have_text(by_loss)
    # Only one column is sorted at a time.
    expect(page.locator("th[aria-sort]:not([aria-sort=none])")).to_have_count(1)


def test_filter_numeric_state_and_text(page: Any, seeded: dict[str, Any]) -> None:
    open_table(page)
    cases = [
        ("config.lr>=0.01", names_where(seeded, lambda r: r["config"]["lr"] >= 0.01)),
        ("summary.train/loss<0.5", names_where(seeded, lambda r: r["last"]["train/loss"] < 0.5)),
        ("state=failed", names_where(seeded, lambda r: r["state"] == "failed")),
        ("resnet", names_where(seeded, lambda r: "resnet" in r["tags"])),
        ("wide", {"wide"}),
    ]
    for text, expected in cases:
        assert 0 < len(expected) < len(seeded["runs"]), f"seed data does not exercise {text!r}"
        apply_filter(page, text)
        expect(page.locator(ROWS), f"rows left by {text!r}").to_have_count(len(expected))
        assert {n.inner_text().strip() for n in page.locator(NAMES).all()} == expected, text
        expect(page.get_by_test_id("runs-total")).to_contain_text(str(len(expected)))
    apply_filter(page, "")
    expect(page.locator(ROWS)).to_have_count(len(seeded["runs"]))


def test_bad_filter_names_the_problem(page: Any, seeded: dict[str, Any]) -> None:
    open_table(page)
    apply_filter(page, "bogus.lr>=0.01")
    error = page.get_by_test_id("filter-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("bogus")
    apply_filter(page, "state=finished")
    expect(page.get_by_test_id("filter-error")).to_be_hidden()
    finished = names_where(seeded, lambda r: r["state"] == "finished")
    expect(page.locator(ROWS)).to_have_count(len(finished))


def test_column_chooser_hides_and_shows(page: Any) -> None:
    open_table(page)
    column = page.locator('th[data-col="config.batch"]')
    expect(column).to_be_visible()
    page.get_by_test_id("columns-button").click()
    toggle = page.locator(
        'input[type=checkbox][data-testid=column-toggle][data-col="config.batch"]'
    )
    expect(toggle).to_be_checked()
    toggle.uncheck()
    expect(column).to_have_count(0)
    toggle.check()
    expect(column).to_be_visible()


def scroll_table_to_the_right(page: Any) -> None:
    page.locator("table[data-testid=runs-table]").evaluate(
        "t => { for (let e = t; e; e = e.parentElement) e.scrollLeft = e.scrollWidth; }"
    )


def test_pinned_column_stays_in_view(page: Any) -> None:
    open_table(page)
    header = page.locator('th[data-col="config.batch"]')
    scroll_table_to_the_right(page)
    # The table is wider than the window: scrolled to its right end, this column is off screen...
    expect(header).not_to_be_in_viewport(ratio=1)
    page.get_by_test_id("columns-button").click()
    page.locator('button[data-testid=column-pin][data-col="config.batch"]').click()
    scroll_table_to_the_right(page)
    # ...until it is pinned.
    expect(header).to_be_in_viewport(ratio=1)


def test_compare_selected_runs(page: Any, seeded: dict[str, Any]) -> None:
    open_table(page)
    chosen = [seeded["runs"]["wide"]["id"], seeded["runs"]["sgd"]["id"]]
    for run_id in chosen:
        page.locator(f'{ROWS}[data-run-id="{run_id}"] input[data-testid=select-run]').check()
    page.get_by_test_id("compare-button").click()
    expect(page).to_have_url(re.compile(r"#/p/ui/compare\?runs="))
    query = parse_qs(urlsplit(unquote(urlsplit(page.url).fragment)).query)
    assert set(query["runs"][0].split(",")) == set(chosen)
    loss = page.locator(f'{PANEL}[data-key="train/loss"]')
    expect(loss).to_have_attribute("data-state", "drawn")
    assert int_attr(loss, "data-series-count") == 2
    # Both runs logged every step of train/loss, few enough to draw in full.
    assert int_attr(loss, "data-point-count") == 2 * seeded["runs"]["wide"]["steps"]


def test_run_link_opens_the_run(page: Any, seeded: dict[str, Any]) -> None:
    open_table(page)
    main = seeded["runs"]["baseline"]
    page.locator(f'{ROWS}[data-run-id="{main["id"]}"] a[data-testid=run-link]').click()
    expect(page).to_have_url(re.compile(rf"#/p/ui/r/{main['id']}(/overview)?$"))
    expect(page.get_by_test_id("run-state")).to_have_text("finished")
