"""Serving the web UI: the single page at ``/`` and its files under ``/ui/``.

The UI is plain ES modules, CSS and one HTML page (``src/server/ui/``), with no
build step; the third-party libraries (uPlot, Vega, Vega-Lite, vega-embed) are
copied into ``ui/vendor/`` by ``python -m server.ui_vendor``. Without them ``/``
answers a page that says how to build them, and the API is unaffected.

None of this needs a key: the page and its scripts hold nothing secret, and the
page itself asks for the key (or the login link) when the API answers 401.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).resolve().parent / "ui"
VENDOR_DIR = UI_DIR / "vendor"
#: The vendored files the page loads; ``server.ui_vendor`` copies them.
VENDOR_FILES = (
    "uPlot.iife.min.js",
    "uPlot.min.css",
    "vega.min.js",
    "vega-lite.min.js",
    "vega-embed.min.js",
)
UI_PREFIX = "/ui/"

# Set explicitly: the platform's mimetypes table may lack .js or call it
# application/x-javascript, and browsers refuse a module script without a
# JavaScript type.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# Vega compiles its expressions with `new Function`, hence 'unsafe-eval';
# vega-embed adds a <style> element, hence 'unsafe-inline' for styles.
_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; frame-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_HEADERS = {
    # Revalidate every time: files change with the checkout and carry no version.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_MISSING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>runbus: UI assets missing</title></head>
<body style="font: 15px/1.5 system-ui, sans-serif; max-width: 44em; margin: 3em auto">
<h1>The runbus web UI is not built yet</h1>
<p>This server is running and its API works, but the UI's third-party files
(uPlot and Vega) are missing from <code>src/server/ui/vendor/</code>:
{missing}.</p>
<p>Build them from the source checkout (needs <code>npm</code>), then reload this page:</p>
<pre>make ui        # or: python -m server.ui_vendor</pre>
<p><code>make demo</code> and <code>make test</code> build them too.</p>
</body></html>
"""


def is_public(path: str) -> bool:
    """Whether ``path`` is part of the UI, served without a key."""
    return path == "/" or path.startswith(UI_PREFIX)


def missing_vendor_files(vendor: Path | None = None) -> list[str]:
    """The vendored files not present in ``vendor`` (default :data:`VENDOR_DIR`; blocking)."""
    folder = VENDOR_DIR if vendor is None else vendor
    return [name for name in VENDOR_FILES if not (folder / name).is_file()]


async def index(request: web.Request) -> web.StreamResponse:
    """The single page, or a page that says how to build the missing assets."""
    missing = await asyncio.to_thread(missing_vendor_files)
    if missing:
        names = ", ".join(f"<code>{n}</code>" for n in missing)
        return web.Response(
            text=_MISSING_PAGE.format(missing=names),
            status=503,
            content_type="text/html",
            headers=_HEADERS,
        )
    return _file(UI_DIR / "index.html")


async def asset(request: web.Request) -> web.StreamResponse:
    """A file under ``ui/``: plain names only, no hidden files, nothing outside."""
    parts = request.match_info["path"].split("/")
    if any(not p or p.startswith(".") or "\\" in p for p in parts):
        raise web.HTTPNotFound()
    path = VENDOR_DIR.joinpath(*parts[1:]) if parts[0] == "vendor" else UI_DIR.joinpath(*parts)
    if path.suffix not in _TYPES or not await asyncio.to_thread(path.is_file):
        raise web.HTTPNotFound()
    return _file(path)


def _file(path: Path) -> web.FileResponse:
    headers = dict(_HEADERS)
    headers["Content-Type"] = _TYPES[path.suffix]
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = _CSP
    return web.FileResponse(path, headers=headers)


def add_routes(app: web.Application) -> None:
    """Register the UI's routes on ``app`` (``/`` and ``/ui/{path}``)."""
    app.router.add_get("/", index)
    app.router.add_get(UI_PREFIX + "{path:.+}", asset)
