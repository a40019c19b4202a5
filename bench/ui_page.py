"""Web UI benchmark in headless Chromium, and the README's screenshots.

    PYTHONPATH=src .venv/bin/python bench/ui_page.py [--only page,table,live]
        [--metrics 20] [--steps 1000000] [--repeat 5] [--page-data DIR]
        [--runs 1000] [--columns 50] [--live-seconds 20] [--live-rate 100]
    PYTHONPATH=src .venv/bin/python bench/ui_page.py --screenshots [--out docs/screenshots]

Each part starts its own ``runbus server`` child over SQLite in a temp dir and
drives Debian's ``chromium`` headless through Playwright (see tests/ui/).

- page: a run with ``--metrics`` metrics of ``--steps`` steps each, written
  straight through the store API (``Store.append_events``, no HTTP). The run's
  charts tab is opened in a fresh page ``--repeat`` times; a MutationObserver
  installed before the page's own scripts notes ``performance.now()`` (ms since
  navigation start) when each chart panel turns ``data-state="drawn"``.
  Reported: the first panel drawn, and the last of the panels inside the
  first viewport (goals: <= 1 s and <= 2 s).
- table: ``--runs`` runs with ``--columns`` config and summary fields, through
  the store API. On the runs table, clicking a header is timed inside the page
  from the click until the frame in which the header shows its sort and the
  first row is the expected run (goal: <= 300 ms).
- live: a client child logging ``--live-rate`` steps/s of 10 metrics online to
  the server while the run's charts tab is open. Chrome's network events
  (CDP ``Network.loadingFinished``, ``encodedDataLength``: bytes on the wire,
  headers included) are summed per update: the requests of one tick of the
  page's poller, which opens with ``GET .../last_seq`` (or, failing that, one
  burst of requests with gaps under 300 ms); the page load is left out
  (goal: <= 50 KB per update).
- ``--screenshots``: the seeded runs of the browser tests, photographed page by
  page into ``--out`` (the committed PNGs of docs/screenshots come from this).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The server child, browser launch and seeding are the browser tests' harness.
sys.path.insert(0, str(ROOT / "tests" / "ui"))

import ui_harness as ui  # noqa: E402

from server.store import open_store  # noqa: E402

VIEWPORT = {"width": 1280, "height": 900}
BIG_RUN = "big"
LIVE_KEYS = [
    "train/loss",
    "train/acc",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_s",
    "train/epoch",
    "val/loss",
    "val/acc",
    "sys/gpu_mem_gb",
    "sys/step_time_s",
]

#: Installed before the page's scripts: when each chart panel is first drawn.
DRAWN_OBSERVER = """
window.__drawn = {};
const note = (e) => {
  if (e.nodeType !== 1) return;
  const panels = e.matches('[data-testid=chart-panel]') ? [e]
    : e.querySelectorAll('[data-testid=chart-panel]');
  for (const p of panels) {
    if (p.dataset.state === 'drawn' && !(p.dataset.key in window.__drawn)) {
      window.__drawn[p.dataset.key] = performance.now();
    }
  }
};
new MutationObserver((records) => {
  for (const r of records) {
    if (r.type === 'attributes') note(r.target);
    else for (const n of r.addedNodes) note(n);
  }
}).observe(document, {subtree: true, childList: true, attributes: true,
                      attributeFilter: ['data-state']});
"""

#: True once every chart panel that intersects the viewport is drawn.
VISIBLE_DRAWN = """() => {
  const ps = [...document.querySelectorAll('[data-testid=chart-panel]')].filter((p) => {
    const r = p.getBoundingClientRect();
    return r.bottom > 0 && r.top < innerHeight && r.width > 0;
  });
  return ps.length > 0 && ps.every((p) => p.dataset.state === 'drawn');
}"""

#: Keys of the panels inside the viewport.
VISIBLE_KEYS = """() => [...document.querySelectorAll('[data-testid=chart-panel]')]
  .filter((p) => { const r = p.getBoundingClientRect();
                   return r.bottom > 0 && r.top < innerHeight && r.width > 0; })
  .map((p) => p.dataset.key)"""

#: Click a header; resolve with ms until a frame shows the sort and the expected first row.
TIMED_SORT = """async ([col, dir, first]) => {
  const sel = `th[data-col="${col}"]`;
  const rows = 'table[data-testid=runs-table] tbody tr[data-run-id]';
  const t0 = performance.now();
  document.querySelector(sel).click();
  for (;;) {
    await new Promise((r) => requestAnimationFrame(r));
    const th = document.querySelector(sel);
    const top = document.querySelector(rows);
    if (th && th.getAttribute('aria-sort') === dir && top && top.dataset.runId === first) {
      return performance.now() - t0;
    }
    if (performance.now() - t0 > 30000) throw new Error(`no ${dir} sort of ${col} in 30 s`);
  }
}"""


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from inside Playwright's sync API (which owns a loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# ----------------------------------------------------------------------------- seeding


async def seed_big_run(data: Path, metrics: int, steps: int) -> None:
    """One run of ``metrics`` metrics x ``steps`` steps, through the store API."""
    store = await open_store(data / "runbus.db")
    keys = [f"{('train', 'val', 'eval', 'opt')[i % 4]}/m{i:02d}" for i in range(metrics)]
    rng = random.Random(0)
    chunk = max(1, 200_000 // metrics)
    try:
        await store.upsert_run(
            "bench", BIG_RUN, name=f"{metrics}x{steps}", config={"metrics": metrics}
        )
        t0 = time.perf_counter()
        for s0 in range(0, steps, chunk):
            batch = [
                (
                    "row",
                    s + 1,
                    1_700_000_000.0 + s * 0.01,
                    {
                        "step": s,
                        "runtime": s * 0.01,
                        "data": {
                            k: math.exp(-s / steps * (2 + j % 5)) + rng.random() * 0.05
                            for j, k in enumerate(keys)
                        },
                    },
                )
                for s in range(s0, min(steps, s0 + chunk))
            ]
            await store.append_events("bench", BIG_RUN, batch)
        seq = steps + 1
        await store.append_events(
            "bench", BIG_RUN, [("finish", seq, time.time(), {"exit_code": 0})]
        )
        print(f"  seeded {metrics} x {steps:,} points in {time.perf_counter() - t0:.0f} s")
    finally:
        await store.aclose()


async def seed_table(data: Path, runs: int, columns: int) -> dict[str, dict[str, float]]:
    """``runs`` runs with ``columns`` fields, half config and half summary; returns their values."""
    store = await open_store(data / "runbus.db")
    rng = random.Random(1)
    half = columns // 2
    values: dict[str, dict[str, float]] = {}
    try:
        for i in range(runs):
            run_id = f"r{i:04d}"
            config = {f"c{j:02d}": rng.random() for j in range(half)}
            summary = {f"s{j:02d}": rng.random() for j in range(columns - half)}
            await store.upsert_run(
                "bench-table", run_id, name=f"run-{i:04d}", config=config, tags=[f"t{i % 7}"]
            )
            ts = 1_700_000_000.0 + i
            await store.append_events(
                "bench-table",
                run_id,
                [
                    ("summary", 1, ts, {"values": summary}),
                    ("finish", 2, ts + 60, {"exit_code": 0}),
                ],
            )
            values[run_id] = {f"config.{k}": v for k, v in config.items()} | {
                f"summary.{k}": v for k, v in summary.items()
            }
    finally:
        await store.aclose()
    return values


# ----------------------------------------------------------------------------- parts


def new_page(browser: Any, server: ui.ServerProcess) -> Any:
    context = browser.new_context(viewport=VIEWPORT, base_url=server.url)
    context.set_default_timeout(60_000)
    ui.login(context, server)
    return context.new_page()


def bench_page(browser: Any, args: argparse.Namespace) -> None:
    print(f"run page: {args.metrics} metrics x {args.steps:,} steps")
    if args.page_data:
        measure_page(browser, args, Path(args.page_data))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            measure_page(browser, args, Path(tmp))


def measure_page(browser: Any, args: argparse.Namespace, data: Path) -> None:
    key_file = data / "bench-admin-key"
    if key_file.exists():
        print(f"  reusing the run seeded in {data}")
        server = ui.ServerProcess(data, key=key_file.read_text().strip())
    else:
        data.mkdir(parents=True, exist_ok=True)
        run_async(seed_big_run(data, args.metrics, args.steps))
        server = ui.ServerProcess(data)
        key_file.write_text(server.key)
    try:
        first: list[float] = []
        visible: list[float] = []
        for i in range(args.repeat):
            page = new_page(browser, server)
            page.add_init_script(DRAWN_OBSERVER)
            page.goto(f"/#/p/bench/r/{BIG_RUN}/charts")
            page.wait_for_function(VISIBLE_DRAWN, timeout=60_000)
            keys = page.evaluate(VISIBLE_KEYS)
            drawn = page.evaluate("window.__drawn")
            points = page.evaluate(
                "() => [...document.querySelectorAll('[data-testid=chart-panel]"
                "[data-state=drawn]')].map((p) => +p.dataset.pointCount)"
            )
            ready = page.evaluate(
                "() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
            )
            first.append(min(drawn.values()))
            visible.append(max(drawn[k] for k in keys))
            print(
                f"  load {i + 1}: DOMContentLoaded {ready:.0f} ms, first chart {first[-1]:.0f} ms, "
                f"all {len(keys)} visible {visible[-1]:.0f} ms "
                f"(points per drawn panel: {min(points)}..{max(points)})"
            )
            page.context.close()
    finally:
        server.stop()
    print(
        f"| run page, {args.metrics} x {args.steps:,} | first chart: first load "
        f"{first[0]:.0f} ms, median {statistics.median(first):.0f} ms, max {max(first):.0f} ms "
        f"| all visible: first load {visible[0]:.0f} ms, median "
        f"{statistics.median(visible):.0f} ms, max {max(visible):.0f} ms |"
    )


def bench_table(browser: Any, args: argparse.Namespace) -> None:
    print(f"runs table: {args.runs} runs x {args.columns} columns")
    with tempfile.TemporaryDirectory() as tmp:
        values = run_async(seed_table(Path(tmp), args.runs, args.columns))
        server = ui.ServerProcess(Path(tmp))
        try:
            page = new_page(browser, server)
            page.goto("/#/p/bench-table")
            page.wait_for_selector("table[data-testid=runs-table] tbody tr[data-run-id]")
            shown = page.eval_on_selector_all(
                "th[data-col^='config.'], th[data-col^='summary.']",
                "ths => ths.map(t => t.dataset.col)",
            )
            rows = page.locator("table[data-testid=runs-table] tbody tr[data-run-id]").count()
            print(f"  {len(shown)} config/summary columns shown, {rows} rows in the DOM")
            times: list[float] = []
            for i in range(args.repeat * 4):
                col = shown[i % len(shown)]
                # Each column is clicked twice in a row: ascending, then descending.
                for direction in ("ascending", "descending"):
                    pick = min if direction == "ascending" else max
                    expected = pick(values, key=lambda r, c=col: values[r][c])
                    times.append(page.evaluate(TIMED_SORT, [col, direction, expected]))
            page.context.close()
        finally:
            server.stop()
    print(
        f"| runs table, {args.runs} x {args.columns}, {len(times)} sorts | median "
        f"{statistics.median(times):.0f} ms, p90 {pct(times, 0.9):.0f} ms, "
        f"max {max(times):.0f} ms |"
    )


def bench_live(browser: Any, args: argparse.Namespace) -> None:
    print(f"live run: {args.live_rate} steps/s x {len(LIVE_KEYS)} metrics, {args.live_seconds} s")
    with tempfile.TemporaryDirectory() as tmp:
        server = ui.ServerProcess(Path(tmp) / "data")
        live = ui.LiveRun(
            server,
            Path(tmp) / "runs",
            project="bench-live",
            interval=1 / args.live_rate,
            keys=",".join(LIVE_KEYS),
        )
        try:
            page = new_page(browser, server)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            started: dict[str, tuple[float, str]] = {}
            done: list[tuple[float, str, int]] = []
            cdp.on(
                "Network.requestWillBeSent",
                lambda e: started.__setitem__(
                    e["requestId"], (e["timestamp"], e["request"]["url"])
                ),
            )

            def finished(e: dict[str, Any]) -> None:
                t, url = started.get(e["requestId"], (e["timestamp"], "?"))
                done.append((t, url, int(e["encodedDataLength"])))

            cdp.on("Network.loadingFinished", finished)
            page.goto(f"/#/p/bench-live/r/{live.run_id}/charts")
            page.wait_for_function(VISIBLE_DRAWN, timeout=60_000)
            loaded = len(done)
            t_start = time.monotonic()
            # Let the page poll while the client logs; Playwright dispatches CDP events meanwhile.
            while time.monotonic() - t_start < args.live_seconds:
                page.wait_for_timeout(500)
            points = page.evaluate(
                "() => [...document.querySelectorAll('[data-testid=chart-panel]"
                "[data-state=drawn]')].map((p) => +p.dataset.pointCount)"
            )
            page.context.close()
        finally:
            code = live.finish()
            server.stop()
        if code != 0:
            raise SystemExit(f"the live client failed:\n{live.log()}")
        steps, seconds = live.logged()
        print(f"  the client logged {steps} steps in {seconds:.1f} s ({steps / seconds:.0f}/s)")
    # Requests after the first load, one list per update. The page's poller opens
    # each tick with GET .../last_seq; without one, a burst (gaps < 300 ms) is an update.
    polls = sorted(done[loaded:])
    ticks = any(url.endswith("/last_seq") for _, url, _ in polls)
    updates: list[list[tuple[float, str, int]]] = []
    for req in polls:
        if ticks:
            opens = req[1].endswith("/last_seq")
        else:
            opens = not updates or req[0] - updates[-1][-1][0] >= 0.3
        if opens or not updates:
            updates.append([req])
        else:
            updates[-1].append(req)
    # The first update may still be the page's start-up; the last one may be cut off.
    steady = updates[1:-1] or updates
    window = polls[-1][0] - polls[0][0] if len(polls) > 1 else float("nan")
    sizes = [sum(r[2] for r in u) for u in steady]
    per_update = [len(u) for u in steady]
    fetched = [size for size, n in zip(sizes, per_update, strict=True) if n > 1] or sizes
    gaps = [b[0][0] - a[0][0] for a, b in itertools.pairwise(steady)]
    print(
        f"  {len(steady)} updates, {min(per_update)}..{max(per_update)} requests each, every "
        f"{statistics.median(gaps) if gaps else float('nan'):.2f} s; drawn panels now hold "
        f"{min(points)}..{max(points)} points"
    )
    print("  bytes per update: " + " ".join(f"{b / 1024:.1f}K" for b in sizes))
    biggest = max(steady, key=lambda u: sum(r[2] for r in u))
    for _, url, size in biggest:
        print(f"    {size:>7,} B  {url.split('/api/v1', 1)[-1][:110]}")
    print(
        f"| live run, {args.live_rate:.0f} steps/s x {len(LIVE_KEYS)} metrics | per update: "
        f"median {statistics.median(sizes) / 1024:.1f} KB, of those that fetched data "
        f"{statistics.median(fetched) / 1024:.1f} KB, max {max(sizes) / 1024:.1f} KB "
        f"({len(sizes)} updates; {sum(r[2] for r in polls) / 1024 / window:.1f} KB/s overall) |"
    )


def screenshots(browser: Any, args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = ui.ServerProcess(Path(tmp) / "data")
        try:
            seeded = ui.seed_runs(server, Path(tmp) / "runs", project="cifar-resnet")
            project = seeded["project"]
            main = seeded["runs"]["baseline"]["id"]
            others = [r["id"] for n, r in seeded["runs"].items() if n != "baseline"]
            page = new_page(browser, server)
            shots = [
                ("projects", "/#/", "[data-testid=project-link]"),
                ("runs-table", f"/#/p/{project}", "table[data-testid=runs-table] tbody tr"),
                ("run-overview", f"/#/p/{project}/r/{main}/overview", "[data-testid=run-config]"),
                ("run-charts", f"/#/p/{project}/r/{main}/charts", None),
                ("run-logs", f"/#/p/{project}/r/{main}/logs", "div.log-line"),
                ("run-media", f"/#/p/{project}/r/{main}/media", "img[data-testid=media-image]"),
                ("compare", f"/#/p/{project}/compare?runs={main},{','.join(others[:3])}", None),
            ]
            for name, route, ready in shots:
                page.goto("about:blank")
                page.goto(route)
                if ready is None:
                    page.wait_for_function(VISIBLE_DRAWN)
                else:
                    page.wait_for_selector(ready)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(out / f"{name}.png"))
                print(f"  wrote {out / f'{name}.png'}")
            page.context.close()
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", default="page,table,live", help="comma list of page, table, live")
    ap.add_argument("--metrics", type=int, default=20)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--page-data",
        help="server data dir for the page part: seeded on first use, reused after "
        "(seeding 20 x 1M takes minutes; a reused dir keeps its --metrics/--steps); "
        "default: a temp dir",
    )
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--columns", type=int, default=50)
    ap.add_argument("--live-seconds", type=float, default=20.0)
    ap.add_argument("--live-rate", type=float, default=100.0, help="steps per second")
    ap.add_argument("--screenshots", action="store_true", help="only write the screenshots")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = ap.parse_args()
    reason = ui.browser_missing() or ui.ui_assets_missing()
    if reason:
        raise SystemExit(f"skipped: {reason}")
    from playwright.sync_api import sync_playwright

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load}; Chromium {ui.chromium_path()}")
    with sync_playwright() as pw:
        browser = ui.launch_chromium(pw)
        try:
            if args.screenshots:
                screenshots(browser, args)
                return
            parts = {"page": bench_page, "table": bench_table, "live": bench_live}
            for name in args.only.split(","):
                if name not in parts:
                    raise SystemExit(f"--only {name!r}: use page, table and/or live")
                parts[name](browser, args)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
