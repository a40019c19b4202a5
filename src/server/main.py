"""``runbus server``: serve the API until SIGTERM/SIGINT; ``runbus server keys``: manage keys.

On the first start (no keys yet) an admin key is created and printed once, with
a login URL for the browser; it is never shown again (only its hash is kept).
A legacy ``<data>/keys.json`` is imported into the database once.

SIGTERM or SIGINT stops the server gracefully: the listening socket closes,
requests in flight get up to ``--shutdown-timeout`` seconds to finish, the
store closes, and the process exits 0 with one line saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import web

from .app import KEYS_KEY, Limits, make_app
from .auth import (
    CACHE_TTL,
    Bootstrap,
    KeyFileError,
    KeyInfo,
    KeyInputError,
    KeyNotFoundError,
    Keys,
    LastAdminKeyError,
)
from .store import Store, StoreError, open_store

#: Seconds requests in flight may take to finish once a stop signal arrives.
SHUTDOWN_TIMEOUT = 10.0
#: Seconds aiohttp gives handlers still running after the drain before cancelling them.
_CUT_OFF_GRACE = 0.5
_PROG = "runbus server"


class Drain:
    """Requests in flight, counted so a stop can wait for them and say how many it cut off.

    aiohttp's own graceful shutdown stops reading every connection first, so a
    request still sending its body (a file upload) could never finish. The
    server therefore closes its listening socket and waits here, connections
    still readable, before handing over to aiohttp's shutdown.
    """

    def __init__(self) -> None:
        self.active = 0
        self.cut_off = 0
        self.stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Count the request while its handler runs."""
        self.active += 1
        self._idle.clear()
        try:
            resp = await handler(request)
        except asyncio.CancelledError:
            if self.stopping:
                self.cut_off += 1
            raise
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()
        if self.stopping:
            # Close kept-alive connections as they finish: a client's next
            # request then meets the closed socket and goes elsewhere.
            resp.force_close()
        return resp

    async def wait_idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds until no request is in flight."""
        self.stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)


def _db_target(db: str | None, data: Path) -> str | Path:
    return db or data / "runbus.db"


async def serve(
    host: str,
    port: int,
    db: str | None,
    data_dir: str | Path,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> Drain:
    """Serve the API until ``stop`` is set (or the task is cancelled); return the drain counts.

    ``db`` defaults to ``<data_dir>/runbus.db`` (SQLite). ``ready`` (for tests
    and embedding) is set once the socket listens. Raises ``OSError`` (port
    taken, unreadable data directory), :class:`~server.store.StoreError`,
    :class:`~server.auth.KeyFileError`.
    """
    data = Path(data_dir)
    # Blocking, but once at startup, before anything else runs on the loop.
    data.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    store = await open_store(_db_target(db, data))
    drain = Drain()
    try:
        app = make_app(store, data_dir=data, limits=Limits())
        app.middlewares.insert(0, drain.middleware)
        boot = await app[KEYS_KEY].bootstrap(data)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_CUT_OFF_GRACE)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            # With --port 0 the system picks the port: report the one bound.
            for address in runner.addresses:
                if isinstance(address, tuple) and len(address) >= 2:
                    port = int(address[1])
                    break
            shown = "[" + host + "]" if ":" in host else host
            _announce(boot, f"http://{shown}:{port}")
            if ready is not None:
                ready.set()
            await (stop or asyncio.Event()).wait()
            await site.stop()  # refuse new connections; open ones stay readable
            await drain.wait_idle(shutdown_timeout)
        finally:
            # Cancels whatever is still running, then closes every connection.
            await runner.cleanup()
    finally:
        await store.aclose()
    return drain


def _announce(boot: Bootstrap, url: str) -> None:
    """Startup lines; the last one, ``listening on``, means ready."""
    if boot.imported or boot.legacy_renamed:
        line = f"Imported {boot.imported} API key(s) from the legacy keys.json into the database"
        if boot.legacy_renamed is not None:
            line += f" (renamed to {boot.legacy_renamed.name}; it is no longer read)"
        print(line, flush=True)
    if boot.admin_key is not None:
        print(
            "First start: created an admin API key. It is shown only now; keep it.\n"
            f"  key:   {boot.admin_key}\n"
            f"  login: {url}/login?token={boot.admin_key}",
            flush=True,
        )
    print(f"runbus server listening on {url}", flush=True)


async def _serve_until_signal(args: argparse.Namespace) -> str:
    """Serve with SIGTERM/SIGINT as the stop signal; the line to print at exit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not on Windows: there Ctrl-C stays a KeyboardInterrupt (see main).
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
            handled.append(sig)
    try:
        drain = await serve(
            args.host,
            args.port,
            args.db,
            args.data,
            stop=stop,
            shutdown_timeout=args.shutdown_timeout,
        )
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    why = received[0] if received else "stop"
    cut = (
        f"{drain.cut_off} request(s) cut off after {args.shutdown_timeout:g} s"
        if drain.cut_off
        else "requests in flight finished"
    )
    return f"runbus server stopped on {why}: {cut}, store closed"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``runbus server``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keys"]:
        return keys_main(argv[1:])
    ap = argparse.ArgumentParser(
        prog=_PROG,
        description="Run the runbus server. `runbus server keys --help`: manage API keys.",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    _store_options(ap)
    ap.add_argument(
        "--shutdown-timeout",
        type=float,
        default=SHUTDOWN_TIMEOUT,
        metavar="S",
        help="seconds requests in flight may take to finish after SIGTERM/SIGINT (default 10)",
    )
    args = ap.parse_args(argv)
    try:
        line = asyncio.run(_serve_until_signal(args))
    except KeyboardInterrupt:
        return 0
    except (OSError, StoreError, KeyFileError) as e:
        print(f"{_PROG}: {e}", file=sys.stderr)
        return 1
    print(line, flush=True)
    return 0


# ------------------------------------------------------------------ keys CLI


def _store_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--db",
        default=None,
        help="SQLite path or postgresql:// URL (default: <data>/runbus.db)",
    )
    ap.add_argument(
        "--data", default="runbus-data", help="directory for files and SQLite (default runbus-data)"
    )


def _right(text: str) -> tuple[str, str]:
    project, sep, right = text.rpartition("=")
    if not sep or not project:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not PROJECT=RIGHT (e.g. mnist=write; RIGHT is read or write)"
        )
    return project, right


def _keys_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=f"{_PROG} keys",
        description="Manage API keys directly in the server's database (no key needed).",
    )
    sub = ap.add_subparsers(dest="action", required=True, metavar="{list,create,revoke}")
    ls = sub.add_parser("list", help="list keys (never the keys themselves)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    mk = sub.add_parser("create", help="create a key; prints it once, on stdout")
    mk.add_argument("--name", default="", help="what the key is for")
    mk.add_argument("--admin", action="store_true", help="every project, every right, key admin")
    mk.add_argument(
        "--project",
        "-p",
        action="append",
        default=[],
        type=_right,
        metavar="PROJECT=RIGHT",
        help="a right (read or write) on a project; repeat for several",
    )
    rv = sub.add_parser(
        "revoke", help=f"revoke a key by id (every server refuses it within {CACHE_TTL:g} s)"
    )
    rv.add_argument("key_id", metavar="ID")
    for p in (ls, mk, rv):
        _store_options(p)
    return ap


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _print_keys(infos: list[KeyInfo]) -> None:
    print(f"{'ID':<12}  {'NAME':<20}  {'CREATED':<19}  {'LAST USED':<19}  STATUS   RIGHTS")
    for k in infos:
        rights = "admin" if k.admin else ", ".join(f"{p}={r}" for p, r in k.projects.items())
        status = "revoked" if k.revoked is not None else "active"
        print(
            f"{k.id:<12}  {k.name[:20]:<20}  {_when(k.created):<19}  "
            f"{_when(k.last_used):<19}  {status:<7}  {rights}"
        )


async def _keys_action(args: argparse.Namespace) -> None:
    data = Path(args.data)
    store: Store = await open_store(_db_target(args.db, data))
    try:
        keys = Keys(store)
        boot = await keys.bootstrap(data, create_admin=False)
        if boot.imported:
            print(f"Imported {boot.imported} API key(s) from the legacy keys.json", file=sys.stderr)
        if args.action == "list":
            infos = await keys.list_keys()
            if args.json:
                for k in infos:
                    print(orjson.dumps(k.as_json()).decode())
                return
            _print_keys(infos)
        elif args.action == "create":
            key, info = await keys.create(
                name=args.name, admin=args.admin, projects=dict(args.project)
            )
            print(f"created key {info.id}; it is shown only now, keep it:", file=sys.stderr)
            print(key)
        else:
            info = await keys.revoke(args.key_id)
            print(f"revoked key {info.id} ({info.name or 'no name'})")
    finally:
        await store.aclose()


def keys_main(argv: list[str]) -> int:
    """``runbus server keys list|create|revoke``; returns the exit status."""
    args = _keys_parser().parse_args(argv)
    try:
        asyncio.run(_keys_action(args))
    except (KeyInputError, KeyNotFoundError, LastAdminKeyError) as e:
        print(f"{_PROG} keys: error: {e}", file=sys.stderr)
        return 1
    except (OSError, StoreError, KeyFileError) as e:
        print(f"{_PROG} keys: {e}", file=sys.stderr)
        return 1
    return 0
