"""Build the web UI's third-party assets: ``npm ci`` in ``web/``, then copy the dist files.

``python -m server.ui_vendor`` (``make ui``; ``make demo`` and ``make test`` run
it once) installs the versions pinned in ``web/package-lock.json`` and copies
the files the UI loads into ``src/server/ui/vendor/``, with each package's
licence beside them. That folder is git-ignored: no third-party code is
committed, and the server tells how to build it when it is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .ui import VENDOR_DIR

#: Where each vendored file (``server.ui.VENDOR_FILES``) comes from, relative
#: to ``web/node_modules``.
SOURCES: dict[str, str] = {
    "uPlot.iife.min.js": "uplot/dist/uPlot.iife.min.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
    "vega.min.js": "vega/build/vega.min.js",
    "vega-lite.min.js": "vega-lite/build/vega-lite.min.js",
    "vega-embed.min.js": "vega-embed/build/vega-embed.min.js",
}
PACKAGES = ("uplot", "vega", "vega-lite", "vega-embed")


class VendorError(RuntimeError):
    """The assets could not be built; the message says what to do."""


def web_dir() -> Path:
    """``web/`` of the source checkout this module lives in."""
    return Path(__file__).resolve().parents[2] / "web"


def npm_ci(web: Path) -> None:
    """Install exactly the locked versions (``npm ci``) into ``web/node_modules``."""
    if not (web / "package-lock.json").is_file():
        raise VendorError(
            f"{web / 'package-lock.json'} is missing: build the UI assets from a source checkout"
        )
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is not on PATH: install Node.js (npm 9 or later) and run this again")
    # --ignore-scripts: none of these packages needs an install script, and not
    # running any keeps a compromised dependency from running code at install.
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
    done = subprocess.run(cmd, cwd=web, check=False)
    if done.returncode != 0:
        raise VendorError(f"`npm ci` in {web} failed (exit {done.returncode}); see its output")


def copy_assets(web: Path, dest: Path = VENDOR_DIR) -> list[Path]:
    """Copy the dist files and licences from ``web/node_modules`` into ``dest``."""
    modules = web / "node_modules"
    missing = [src for src in SOURCES.values() if not (modules / src).is_file()]
    if missing:
        raise VendorError(
            f"{modules} lacks {', '.join(missing)}: run `npm ci` in {web} (or drop --no-install)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, src in SOURCES.items():
        copied.append(_copy(modules / src, dest / name))
    for pkg in PACKAGES:
        licence = next(
            (p for p in sorted((modules / pkg).glob("LICENSE*")) if p.is_file()),
            None,
        )
        if licence is not None:
            copied.append(_copy(licence, dest / f"{pkg}.LICENSE.txt"))
    return copied


def _copy(src: Path, dst: Path) -> Path:
    # Through a temporary name, so a server reading the folder never sees half a file.
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m server.ui_vendor [--no-install]``."""
    ap = argparse.ArgumentParser(
        prog="python -m server.ui_vendor",
        description="Install the UI's pinned npm packages and copy their dist files.",
    )
    ap.add_argument(
        "--no-install", action="store_true", help="copy from web/node_modules without `npm ci`"
    )
    args = ap.parse_args(argv)
    web = web_dir()
    try:
        if not args.no_install:
            npm_ci(web)
        copied = copy_assets(web)
    except (VendorError, OSError) as e:
        print(f"ui_vendor: {e}", file=sys.stderr)
        return 1
    print(f"ui_vendor: copied {len(copied)} files into {VENDOR_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
