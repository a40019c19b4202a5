"""The ``runbus`` command line: list, show and export local runs.

Only the standard library is imported at module level, so ``runbus --help``
answers at once; the run reader is imported by the commands that need it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pipeline.reader import is_run_dir, list_run_dirs, run_id_of
from pipeline.render import (
    format_duration,
    format_value,
    is_number,
    summary_table,
    table,
)

if TYPE_CHECKING:
    from pipeline.reader import RunData

__all__ = ["main"]

_PROG = "runbus"
_RESERVED = ("_step", "_timestamp", "_runtime")


class CliError(Exception):
    """A problem the user can fix: printed as one message, exit code 1."""


# -- helpers -------------------------------------------------------------------


def _default_dir() -> Path:
    from pipeline.settings import runs_dir  # one place reads $RUNBUS_DIR

    return runs_dir(None)


def _read(path: Path) -> RunData:
    """``pipeline.read_run`` with its failures turned into user-facing errors."""
    from pipeline import read_run

    try:
        return read_run(path)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read run directory {path}: {exc}") from exc


def _local_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _steps(data: RunData) -> int:
    steps = data.metadata.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else len(data.history)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dict items with dotted keys (``{"a": {"b": 1}}`` -> ``a.b``)."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _series(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Each numeric history key's values in step order (rows lacking it are skipped)."""
    out: dict[str, list[float | None]] = {}
    for row in history:
        for k, v in row.items():
            if k.startswith("_") or not is_number(v):
                continue
            try:
                f = float(v)
            except OverflowError:  # an int beyond float range
                f = float("inf") if v > 0 else float("-inf")
            out.setdefault(k, []).append(f)
    return out


class _Runs:
    """The runs under one directory, each read at most once per command."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, RunData | CliError] = {}

    def read(self, path: Path) -> RunData:
        got = self._cache.get(path)
        if got is None:
            try:
                got = _read(path)
            except CliError as exc:
                got = exc
            self._cache[path] = got
        if isinstance(got, CliError):
            raise got
        return got

    def name(self, path: Path) -> str | None:
        try:
            return self.read(path).name
        except CliError:
            return None  # an unreadable run cannot match by name; it still matches by id

    def describe(self, path: Path) -> str:
        name = self.name(path)
        return f"  {path.name}" + (f"  ({name})" if name else "")

    def resolve(self, ref: str) -> Path:
        """A run directory from a path, ``latest``, an id, an id prefix or a name."""
        base = self.root
        if ref == "latest":
            latest = base / "latest-run"
            if latest.is_dir():
                return latest.resolve()
            raise CliError(f"no latest run under {base} (no {latest})")
        as_path = Path(ref)
        if as_path.is_dir() and is_run_dir(as_path):
            return as_path
        if os.sep in ref or (os.altsep and os.altsep in ref):
            # Clearly meant as a path: looking it up as an id would only confuse.
            what = "is not a run directory" if as_path.exists() else "does not exist"
            raise CliError(f"{ref} {what}")
        if not base.is_dir():
            raise CliError(
                f"no run {ref!r}: it is not a run directory, and the runs directory {base}"
                " does not exist (pass --dir or set $RUNBUS_DIR)"
            )
        dirs = list_run_dirs(base)
        exact = [p for p in dirs if ref in (p.name, run_id_of(p))]
        if len(exact) == 1:
            return exact[0]
        matches = exact or [p for p in dirs if run_id_of(p).startswith(ref)]
        if not matches:
            # Names live inside the run, so only now read each one.
            matches = [p for p in dirs if self.name(p) == ref]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            listing = "\n".join(self.describe(p) for p in dirs[:10])
            more = f"\n  ... {len(dirs) - 10} more" if len(dirs) > 10 else ""
            hint = f"; runs there:\n{listing}{more}" if dirs else " (it holds no runs)"
            raise CliError(f"no run matches {ref!r} under {base}{hint}")
        listing = "\n".join(self.describe(p) for p in matches[:20])
        more = f"\n  ... {len(matches) - 20} more" if len(matches) > 20 else ""
        raise CliError(
            f"{ref!r} matches {len(matches)} runs under {base}:\n{listing}{more}\n"
            "give a longer id prefix, or the run directory's path"
        )


def _lookup(args: argparse.Namespace) -> tuple[_Runs, Path]:
    runs = _Runs(args.dir if args.dir is not None else _default_dir())
    return runs, runs.resolve(args.run)


# -- commands ------------------------------------------------------------------


def _ls_value(key: str, value: Any) -> str:
    text = format_value(value, 20)
    # A dict summary ("min=0 max=1") needs brackets to read as one value.
    return f"{key}=({text})" if isinstance(value, Mapping) else f"{key}={text}"


def _cmd_ls(args: argparse.Namespace, out: TextIO) -> int:
    root: Path = args.dir if args.dir is not None else _default_dir()
    if not root.exists():
        raise CliError(f"no runs directory at {root} (pass DIR or set $RUNBUS_DIR)")
    if not root.is_dir():
        raise CliError(f"{root} is not a directory")
    dirs = list_run_dirs(root)
    if not dirs:
        print(f"no runs in {root}", file=out)
        return 0
    found: list[tuple[float, str, list[str]]] = []
    for path in dirs:
        try:
            data = _read(path)
        except CliError as exc:
            # One damaged run must not hide the others.
            print(f"{_PROG}: warning: {exc}", file=sys.stderr)
            found.append((0.0, path.name, [path.name, run_id_of(path), "unreadable"]))
            continue
        summary = [(k, v) for k, v in sorted(data.summary.items()) if not k.startswith("_")]
        values = " ".join(_ls_value(k, v) for k, v in summary[:3])
        row = [
            data.name,
            data.id,
            data.state,
            str(_steps(data)),
            _local_time(data.start_ts),
            format_duration(data.duration),
            values,
        ]
        found.append((data.start_ts or 0.0, path.name, row))
    found.sort(key=lambda t: (t[0], t[1]), reverse=True)
    headers = ["name", "id", "state", "steps", "start", "duration", "summary"]
    align = ["<", "<", "<", ">", "<", ">", "<"]
    print(table([r for _, _, r in found], headers, align), file=out)
    return 0


def _cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    runs, path = _lookup(args)
    data = runs.read(path)
    md = data.metadata
    ident = [
        ("run", f"{data.name} ({data.id})"),
        ("project", data.project),
        ("state", data.state),
        ("dir", str(data.path)),
        ("started", _local_time(data.start_ts)),
        ("ended", _local_time(md.get("end_ts") if is_number(md.get("end_ts")) else None)),
        ("duration", format_duration(data.duration)),
        ("exit code", "-" if md.get("exit_code") is None else format_value(md["exit_code"])),
        ("steps", str(_steps(data))),
    ]
    for key in ("group", "tags", "notes"):
        if md.get(key):
            ident.append((key, format_value(md[key], 80)))
    width = max(len(k) for k, _ in ident)
    for k, v in ident:
        print(f"{k:<{width}}  {v}", file=out)

    if data.refused:
        print(
            f"refused    {data.refused} log call(s) with a step lower than the current one"
            " (kept in the event log)",
            file=out,
        )
    if data.corrupt:
        print(f"corrupt    {data.corrupt} damaged event-log record(s) skipped", file=out)
    if data.torn_bytes:
        print(f"torn tail  {data.torn_bytes} byte(s) of an unfinished write ignored", file=out)

    config = sorted(_flatten(data.config))
    if config:
        print("\nconfig", file=out)
        rows = [[k, format_value(v, 60)] for k, v in config]
        for line in table(rows, ["key", "value"]).splitlines():
            print("  " + line, file=out)

    body = summary_table(data.summary, _series(data.history))
    if body:
        print("\nsummary", file=out)
        for line in body.splitlines():
            print("  " + line, file=out)
    return 0


def _ordered_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: set[str] = set()
    for row in history:
        keys.update(row)
    return list(_RESERVED) + sorted(keys.difference(_RESERVED))


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # exact round trip through float(), including nan/inf/-inf
    if isinstance(v, str | int):  # bool is an int: "True"/"False"
        return str(v)
    return json.dumps(v, sort_keys=True, default=str)  # media references and such


def _cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    runs, path = _lookup(args)
    data = runs.read(path)
    rows = [_portable(r) for r in sorted(data.history, key=lambda r: r.get("_step", 0))]
    keys = _ordered_keys(rows)
    media = [f for f in data.files if f.startswith("media/")]
    if args.output is not None:
        try:
            with open(args.output, "w", encoding="utf-8", newline="") as f:
                _export(rows, keys, args.format, f)
            copied = _copy_media(data.path, media, Path(args.output).resolve().parent)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc}") from exc
        if copied:
            print(
                f"runbus: copied {copied} media file(s) into "
                f"{Path(args.output).parent / 'media'} (rows refer to them by relative path)",
                file=sys.stderr,
            )
    else:
        _export(rows, keys, args.format, out)
        if media:
            print(
                f"runbus: {len(media)} media file(s) stay in {data.path / 'media'}; "
                f"use -o FILE to copy them next to the export",
                file=sys.stderr,
            )
    return 0


def _portable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row without machine-local paths: media keep their run-relative ``path``."""
    return {k: _strip_local(v) for k, v in row.items()}


def _strip_local(value: Any) -> Any:
    if type(value) is dict:
        return {k: _strip_local(v) for k, v in value.items() if k != "local_path"}
    if type(value) is list:
        return [_strip_local(v) for v in value]
    return value


def _copy_media(run_dir: Path, media: list[str], dest: Path) -> int:
    """Copy the run's media files under ``dest``, keeping their relative paths."""
    if dest == run_dir.resolve():
        return 0
    for rel in media:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, target)
    return len(media)


def _export(rows: Sequence[Mapping[str, Any]], keys: list[str], fmt: str, f: TextIO) -> None:
    if fmt == "csv":
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(keys)
        for row in rows:
            writer.writerow([_csv_cell(row.get(k)) for k in keys])
    else:
        for row in rows:
            ordered = {k: row[k] for k in keys if k in row}
            # Python's json writes NaN/Infinity/-Infinity, which json.loads and
            # pandas read back; strict JSON has no way to say them.
            f.write(json.dumps(ordered, default=str) + "\n")


# -- parser and entry point --------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Inspect runbus runs stored on this machine.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser(
        "ls",
        help="list runs, newest first",
        description="List the runs in DIR, newest first.",
    )
    ls.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="runs directory (default: $RUNBUS_DIR, else ./runs)",
    )
    ls.set_defaults(func=_cmd_ls)

    run_help = "a run directory, 'latest', or a run id, id prefix or name looked up under --dir"
    dir_help = "runs directory to look RUN up in (default: $RUNBUS_DIR, else ./runs)"

    show = sub.add_parser(
        "show",
        help="show one run: identity, config, summary",
        description="Show a run's identity, state, config and summary with sparklines.",
    )
    show.add_argument("run", metavar="RUN", help=run_help)
    show.add_argument("--dir", type=Path, metavar="DIR", help=dir_help)
    show.set_defaults(func=_cmd_show)

    export = sub.add_parser(
        "export",
        help="export a run's history as CSV or JSON lines",
        description=(
            "Write a run's history rows in step order. CSV: columns _step, _timestamp,"
            " _runtime, then the other keys sorted; missing cells are empty; floats are"
            " written exactly (nan, inf, -inf read back with float()). JSONL: one JSON"
            " object per row; NaN and infinities are written as the literals NaN,"
            " Infinity and -Infinity, which Python's json.loads and pandas.read_json"
            " accept but strict JSON parsers do not."
        ),
    )
    export.add_argument("run", metavar="RUN", help=run_help)
    export.add_argument("--dir", type=Path, metavar="DIR", help=dir_help)
    export.add_argument(
        "--format", "-f", choices=("csv", "jsonl"), required=True, help="output format"
    )
    export.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout"
    )
    export.set_defaults(func=_cmd_export)

    for name, text in (
        ("sync", "upload runs to a runbus server, resuming where it left off"),
        ("login", "store an API key for a runbus server"),
    ):
        passthrough = sub.add_parser(name, help=text, add_help=False)
        passthrough.add_argument("args", nargs=argparse.REMAINDER)

    server = sub.add_parser(
        "server",
        help="run the runbus server (needs: pip install 'runbus[server]')",
        description="Run the runbus server; `runbus server --help` lists its options.",
        add_help=False,
    )
    server.add_argument("args", nargs=argparse.REMAINDER)
    server.set_defaults(func=_cmd_server)
    return p


def _cmd_server(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from server.main import main as server_main
    except ImportError as exc:
        raise CliError(f"the server needs its extra: pip install 'runbus[server]' ({exc})") from exc
    return server_main(list(args.args))


def main(argv: list[str] | None = None) -> int:
    """Run the ``runbus`` command line; returns the exit status.

    User errors print one line (or a short list) to stderr and return 1; usage
    errors return 2, as argparse does.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sync"]:
        from pipeline.sync import sync_main

        return sync_main(argv[1:])
    if argv[:1] == ["login"]:
        from pipeline.sync import login_main

        return login_main(argv[1:])
    if argv[:1] == ["server"]:
        # The server parses its own options (argparse's REMAINDER would swallow none
        # that start with "-").
        try:
            return _cmd_server(argparse.Namespace(args=argv[1:]), sys.stdout)
        except CliError as exc:
            print(f"{_PROG}: error: {exc}", file=sys.stderr)
            return 1
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 1
    out = sys.stdout
    try:
        code: int = args.func(args, out)
        out.flush()
    except CliError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`runbus export ... | head`): stop quietly, and
        # keep Python from complaining when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        finally:
            os.close(devnull)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
