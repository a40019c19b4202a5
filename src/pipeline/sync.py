"""``runbus sync`` and ``runbus login``, and where a client's server and key come from.

Resolution order for a run, ``Api`` and ``runbus sync``: explicit arguments,
then ``$RUNBUS_SERVER`` / ``$RUNBUS_API_KEY``, then the stored login
(``runbus login URL`` writes ``credentials.json`` under ``$RUNBUS_CONFIG_DIR``,
else ``$XDG_CONFIG_HOME/runbus``, else ``~/.config/runbus``; mode 0600).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

import orjson

CREDENTIALS_FILE = "credentials.json"


# -- credentials -------------------------------------------------------------------


def config_dir() -> Path:
    """Where ``runbus login`` keeps keys."""
    env = os.environ.get("RUNBUS_CONFIG_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "runbus"


def normalize_url(url: str) -> str:
    """A server URL as credentials are keyed: no trailing slash."""
    return url.strip().rstrip("/")


def load_credentials() -> dict[str, Any]:
    """The stored logins: ``{"default": url, "servers": {url: {"api_key": key}}}``."""
    try:
        doc = orjson.loads((config_dir() / CREDENTIALS_FILE).read_bytes())
    except FileNotFoundError:
        return {"servers": {}}
    except (OSError, orjson.JSONDecodeError) as e:
        raise ValueError(
            f"cannot read {config_dir() / CREDENTIALS_FILE}: {e}; fix it or log in again"
        ) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("servers"), dict):
        return {"servers": {}}
    return doc


def save_login(server: str, key: str) -> Path:
    """Store ``key`` for ``server`` (and make it the default server); return the file.

    The file is written to a temporary file created 0600 with ``O_EXCL``, then
    renamed over the old one, so the key is never readable by others, not even
    for a moment, and a crash leaves the old file.
    """
    doc = load_credentials()
    url = normalize_url(server)
    doc["servers"][url] = {"api_key": key}
    doc["default"] = url
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / CREDENTIALS_FILE
    tmp = directory / f".{CREDENTIALS_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def resolve_credentials(
    server: str | None = None, api_key: str | None = None
) -> tuple[str | None, str | None]:
    """``(server, api_key)``: arguments, then the environment, then the stored login."""
    srv = server or os.environ.get("RUNBUS_SERVER") or None
    key = api_key or os.environ.get("RUNBUS_API_KEY") or None
    if srv is not None and key is not None:
        return srv, key
    try:
        doc = load_credentials()
    except ValueError:
        return srv, key
    if srv is None:
        default = doc.get("default")
        srv = default if isinstance(default, str) else None
    if srv is not None and key is None:
        entry = doc["servers"].get(normalize_url(srv))
        if isinstance(entry, dict) and isinstance(entry.get("api_key"), str):
            key = entry["api_key"]
    return srv, key


# -- runbus login ------------------------------------------------------------------


def login_main(argv: list[str] | None = None) -> int:
    """``runbus login URL [--key KEY]``: check the key with the server and store it."""
    ap = argparse.ArgumentParser(prog="runbus login", description="Store an API key for a server.")
    ap.add_argument("url", help="the server, e.g. http://127.0.0.1:8765")
    ap.add_argument("--key", default=None, help="the API key (asked for when not given)")
    ap.add_argument(
        "--no-verify", action="store_true", help="store the key without asking the server"
    )
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # --help or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else 2
    url = normalize_url(args.url)
    if not url.startswith(("http://", "https://")):
        print(f"runbus login: {args.url!r} is not an http:// or https:// URL", file=sys.stderr)
        return 2
    key = args.key or os.environ.get("RUNBUS_API_KEY") or getpass.getpass("API key: ")
    key = key.strip()
    if not key:
        print("runbus login: no key given", file=sys.stderr)
        return 2
    if not args.no_verify:
        req = urllib.request.Request(
            url + "/api/v1/whoami", headers={"Authorization": f"Bearer {key}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                who = orjson.loads(resp.read())
        except urllib.error.HTTPError as e:
            print(
                f"runbus login: {url} refused the key (HTTP {e.code}); check it, "
                "or pass --no-verify to store it anyway",
                file=sys.stderr,
            )
            return 1
        except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as e:
            print(
                f"runbus login: cannot reach {url} ({e}); pass --no-verify to store the key anyway",
                file=sys.stderr,
            )
            return 1
        rights = (
            "admin"
            if who.get("admin")
            else ", ".join(f"{p}: {r}" for p, r in sorted((who.get("projects") or {}).items()))
        )
        print(f"Logged in to {url} (key {who.get('key_id', '?')}; {rights or 'no projects'}).")
    path = save_login(url, key)
    print(f"Stored the key in {path}.")
    return 0


# -- runbus sync -------------------------------------------------------------------


def _run_dirs(refs: list[str]) -> list[Path]:
    """Run directories named by ``refs``: run dirs, runs dirs (every run-*), or run ids."""
    from pipeline.launch import find_run_dir
    from pipeline.reader import EVENTS_FILE, list_run_dirs
    from pipeline.settings import runs_dir

    if not refs:
        refs = [str(runs_dir(None))]
    found: list[Path] = []
    for ref in refs:
        p = Path(ref)
        if (p / EVENTS_FILE).is_file():
            found.append(p)
        elif p.is_dir() and (runs := list_run_dirs(p)):
            # Oldest first: a resumed sync works through them in the order they ran.
            found.extend(reversed([r for r in runs if (r / EVENTS_FILE).is_file()]))
        elif (hit := find_run_dir(runs_dir(None), ref)) is not None:
            found.append(hit)
        else:
            raise ValueError(
                f"{ref!r} is not a run directory, a runs directory with run-* in it, "
                "or the id of a run in the runs directory"
            )
    seen: set[Path] = set()
    unique = []
    for d in found:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


async def _sync_one(
    run_dir: Path, server: str, key: str | None, project: str | None, out: TextIO
) -> bool:
    import aiohttp

    from pipeline.uploader import RetriesExhaustedError, Uploader, UploadError, log_last_seq

    total = log_last_seq(run_dir)
    tty = out.isatty()

    def progress(up: Uploader) -> None:
        if tty:
            print(f"\r  {run_dir.name}: {up.server_last}/{total} events", end="", file=out)

    def retry(reason: str, delay: float) -> None:
        print(f"\n  {run_dir.name}: {reason}; retrying in {delay:.1f} s", file=out)

    up = Uploader(server, key, project, run_dir, on_progress=progress, on_retry=retry)
    try:
        await up.sync()
    except (UploadError, RetriesExhaustedError, aiohttp.ClientError, OSError) as e:
        # aiohttp.ClientError: an answer no HTTP server gives (a broken proxy).
        print(f"\r  {run_dir.name}: failed: {e}", file=out)
        return False
    finally:
        await up.aclose()
    done = f"{up.server_last}/{max(total, up.log_last)} events on the server"
    extra = f", {up.files_sent} file(s) uploaded" if up.files_sent else ""
    skipped = f", {len(up.files_skipped)} file(s) missing locally" if up.files_skipped else ""
    damaged = f", {up.corrupt} damaged frame(s) skipped" if up.corrupt else ""
    print(
        f"\r  {run_dir.name} -> {up.project}/{up.run_id}: sent {up.sent} new, "
        f"{done}{extra}{skipped}{damaged}",
        file=out,
    )
    return True


def sync_main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """``runbus sync [DIR or RUN ...]``: upload runs, resuming where the server left off.

    Safe to run twice, or beside the live run: the server keeps each event
    once, by its sequence number. Returns 0 when every run was uploaded.
    """
    out = out or sys.stdout
    ap = argparse.ArgumentParser(
        prog="runbus sync", description="Upload offline, crashed or partly uploaded runs."
    )
    ap.add_argument("runs", nargs="*", help="run directories, runs directories or run ids")
    ap.add_argument("--server", default=None, help="server URL ($RUNBUS_SERVER, stored login)")
    ap.add_argument("--api-key", default=None, help="API key ($RUNBUS_API_KEY, stored login)")
    ap.add_argument("--project", default=None, help="upload into this project (default: the run's)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # --help or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        import aiohttp  # noqa: F401  (the uploader's HTTP client)
    except ImportError as e:
        print(f"runbus sync: needs aiohttp: pip install 'runbus[server]' ({e})", file=sys.stderr)
        return 1
    server, key = resolve_credentials(args.server, args.api_key)
    if server is None:
        print(
            "runbus sync: no server; pass --server URL, set $RUNBUS_SERVER, or `runbus login URL`",
            file=sys.stderr,
        )
        return 2
    try:
        dirs = _run_dirs(args.runs)
    except ValueError as e:
        print(f"runbus sync: {e}", file=sys.stderr)
        return 2
    if not dirs:
        print("runbus sync: no runs to upload", file=out)
        return 0
    print(f"Uploading {len(dirs)} run(s) to {server}", file=out)

    async def main() -> bool:
        ok = True
        for d in dirs:
            ok = await _sync_one(d, server, key, args.project, out) and ok
        return ok

    return 0 if asyncio.run(main()) else 1
