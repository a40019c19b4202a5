"""``runbus server``: open the store, build the app, serve until interrupted.

On the first start (no keys yet) an admin key is created and printed once, with
a login URL for the browser; it is never shown again (only its hash is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import web

from .app import KEYS_KEY, Limits, make_app
from .store import open_store


async def serve(
    host: str,
    port: int,
    db: str | None,
    data_dir: str | Path,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve the API until cancelled. ``db`` defaults to ``<data_dir>/runbus.db`` (SQLite).

    ``ready`` (for tests and embedding) is set once the socket listens.
    """
    data = Path(data_dir)
    # Blocking, but once at startup, before anything else runs on the loop.
    data.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    store = await open_store(db or data / "runbus.db")
    try:
        app = make_app(store, data_dir=data, limits=Limits())
        keys = app[KEYS_KEY]
        first_key = keys.create(admin=True, name="first admin")[0] if len(keys) == 0 else None
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        try:
            # With --port 0 the system picks the port: report the one bound.
            for address in runner.addresses:
                if isinstance(address, tuple) and len(address) >= 2:
                    port = int(address[1])
                    break
            shown = "[" + host + "]" if ":" in host else host
            print(f"runbus server listening on http://{shown}:{port}", flush=True)
            if first_key is not None:
                print(
                    "First start: created an admin API key. It is shown only now; keep it.\n"
                    f"  key:   {first_key}\n"
                    f"  login: http://{shown}:{port}/login?token={first_key}",
                    flush=True,
                )
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()  # until cancelled (Ctrl-C)
        finally:
            await runner.cleanup()
    finally:
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``runbus server``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="runbus server", description="Run the runbus server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--db", default=None, help="SQLite path or postgresql:// URL")
    ap.add_argument("--data", default="runbus-data", help="directory for keys, files, SQLite")
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.db, args.data))
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"runbus server: {e}", file=sys.stderr)
        return 1
    return 0
