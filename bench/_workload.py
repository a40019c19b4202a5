"""Shared pieces of the runbus benchmarks (benchmarks, not tests).

* The workload: 10 float scalars a step under realistic key names, fresh
  full-precision random values every step (nothing repeats, so no writer can
  win by deduplicating).
* The trackers measured: runbus, the bare orjson loop (the limit), wandb offline,
  trackio local and tensorboardX. Each one is opened the same way in a fresh child.
* The child side: ``python bench/_workload.py '<json task>'`` runs one measurement
  in its own process, in its own temporary directory (also its working
  directory, so no tracker finds a git checkout), and writes a JSON result.
* The parent side: spawning children, medians, percentiles, markdown tables.

Imports of the tracked libraries go through :func:`importlib.import_module` so the
parent never loads them and mypy does not need their stubs.
"""

from __future__ import annotations

import array
import contextlib
import cProfile
import importlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import pstats
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
WORKLOAD = Path(__file__).resolve()

Row = dict[str, float]
Result = dict[str, Any]

# ---------------------------------------------------------------------------
# The workload

#: Key and scale of each logged value; values are ``random() * scale``.
SPEC: tuple[tuple[str, float], ...] = (
    ("train/loss", 5.0),
    ("train/acc", 1.0),
    ("train/lr", 1e-3),
    ("train/grad_norm", 10.0),
    ("train/tokens_per_s", 1e5),
    ("train/epoch", 100.0),
    ("val/loss", 5.0),
    ("val/acc", 1.0),
    ("sys/gpu_mem_gb", 80.0),
    ("sys/step_time_s", 0.5),
)
KEYS: tuple[str, ...] = tuple(k for k, _ in SPEC)


def row_maker(seed: int = 0) -> Callable[[], Row]:
    """A function returning a new row of 10 fresh random floats on each call (~0.6 µs)."""
    rnd = random.Random(seed).random
    spec = SPEC

    def make() -> Row:
        return {k: rnd() * s for k, s in spec}

    return make


# ---------------------------------------------------------------------------
# Trackers


class Opened(NamedTuple):
    """An open tracker: what the loop calls."""

    log: Callable[[Row], object]
    finish: Callable[[], object]
    #: Untimed clean-up after ``finish`` (e.g. stop a service so its RSS is reaped).
    after: Callable[[], object] | None = None


@dataclass(frozen=True)
class Tracker:
    """How to install-check, configure, import and open one tracker."""

    name: str
    #: The module imported (and timed) in the child.
    module: str
    #: Distribution name for the version check (None: part of this repo).
    dist: str | None
    #: The version the benchmark is written against.
    pinned: str | None
    #: Environment for the child, given its temp dir and the output dir measured.
    env: Callable[[Path, Path], dict[str, str]]
    open: Callable[[Any, Path], Opened]
    #: The settings used, as reported in results.
    settings: str


def _env_runbus(tmp: Path, out: Path) -> dict[str, str]:
    return {}


def _open_runbus(mod: Any, out: Path) -> Opened:
    run = mod.init(project="bench", dir=str(out), settings={"quiet": True})
    return Opened(run.log, run.finish)


def _open_runbus_lean(mod: Any, out: Path) -> Opened:
    # The automatic sources off: like with like against wandb-lean.
    from pipeline.testing import QUIET_SETTINGS

    run = mod.init(project="bench", dir=str(out), settings=QUIET_SETTINGS)
    return Opened(run.log, run.finish)


def _env_wandb(tmp: Path, out: Path) -> dict[str, str]:
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(out),
        # Keep wandb's caches and settings out of $HOME and out of the bytes counted.
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
    }


def _open_wandb(mod: Any, out: Path) -> Opened:
    run = mod.init(project="bench", dir=str(out), mode="offline")
    return Opened(run.log, run.finish, mod.teardown)


def _open_wandb_lean(mod: Any, out: Path) -> Opened:
    settings = mod.Settings(
        console="off",
        x_disable_stats=True,
        x_disable_meta=True,
        x_save_requirements=False,
        disable_git=True,
    )
    run = mod.init(project="bench", dir=str(out), mode="offline", settings=settings)
    return Opened(run.log, run.finish, mod.teardown)


def _env_trackio(tmp: Path, out: Path) -> dict[str, str]:
    # trackio reads TRACKIO_DIR at import (default $HF_HOME/trackio).
    return {"TRACKIO_DIR": str(out), "HF_HOME": str(tmp / "hf-home")}


def _open_trackio(mod: Any, out: Path) -> Opened:
    mod.init(project="bench")
    return Opened(mod.log, mod.finish)


def _env_none(tmp: Path, out: Path) -> dict[str, str]:
    return {}


def _open_tensorboardx(mod: Any, out: Path) -> Opened:
    writer = mod.SummaryWriter(logdir=str(out))
    add_scalar = writer.add_scalar
    step = 0

    def log(row: Row) -> None:
        nonlocal step
        for key, value in row.items():
            add_scalar(key, value, step)
        step += 1

    return Opened(log, writer.close)


def _open_bare(mod: Any, out: Path) -> Opened:  # pragma: no cover - the bare loop is inlined
    raise NotImplementedError("the bare loop runs inline, see _bare_loop")


TRACKERS: dict[str, Tracker] = {
    t.name: t
    for t in (
        Tracker(
            "runbus",
            "pipeline",
            None,
            None,
            _env_runbus,
            _open_runbus,
            'pipeline.init(project="bench", dir=tmp, settings={"quiet": True}); '
            "run.log(row); run.finish(); all other settings default (system metrics, "
            "console capture, git, requirements and metadata on)",
        ),
        Tracker(
            "runbus-lean",
            "pipeline",
            None,
            None,
            _env_runbus,
            _open_runbus_lean,
            "as runbus, with settings system=False, console='off', git=False, "
            "requirements=False, metadata=False (compare with wandb-lean)",
        ),
        Tracker(
            "bare",
            "orjson",
            "orjson",
            None,
            _env_none,
            _open_bare,
            "one orjson line per row (_step, _timestamp, _runtime + the 10 floats), "
            "buffered file, flush + close at the end",
        ),
        Tracker(
            "wandb",
            "wandb",
            "wandb",
            "0.31.0",
            _env_wandb,
            _open_wandb,
            'wandb.init(project="bench", dir=tmp, mode="offline"); run.log(row); '
            "run.finish(); env WANDB_MODE=offline WANDB_SILENT=true, WANDB_DIR/CACHE/CONFIG/"
            "DATA_DIR under tmp; everything else default (system stats and console capture on); "
            "wandb.teardown() after finish, untimed",
        ),
        Tracker(
            "wandb-lean",
            "wandb",
            "wandb",
            "0.31.0",
            _env_wandb,
            _open_wandb_lean,
            'as wandb, plus wandb.Settings(console="off", x_disable_stats=True, '
            "x_disable_meta=True, x_save_requirements=False, disable_git=True): no system "
            "metrics, console capture, metadata, requirements or git (compare with runbus-lean)",
        ),
        Tracker(
            "trackio",
            "trackio",
            "trackio",
            "0.43.0",
            _env_trackio,
            _open_trackio,
            'trackio.init(project="bench"); trackio.log(row); trackio.finish(); '
            "env TRACKIO_DIR=tmp, HF_HOME under tmp; everything else default (local SQLite)",
        ),
        Tracker(
            "tensorboardX",
            "tensorboardX",
            "tensorboardX",
            "2.6.5",
            _env_none,
            _open_tensorboardx,
            "SummaryWriter(logdir=tmp); add_scalar(key, value, step) for each of the 10 keys; "
            "writer.close(); defaults otherwise",
        ),
    )
}

#: Variables that would point a runbus child at a server or another directory.
_SCRUB = ("RUNBUS_SERVER", "RUNBUS_API_KEY", "RUNBUS_DIR", "RUNBUS_MODE")


def availability(name: str) -> tuple[bool, str, dict[str, str]]:
    """Whether ``name`` can run with this interpreter: (ok, note or reason, extra child env).

    For runbus the note says where ``pipeline`` comes from; when it is not installed
    but this checkout's ``src/`` has it, children get ``PYTHONPATH=src``.
    """
    tracker = TRACKERS[name]
    if name in ("runbus", "runbus-lean"):
        extra: dict[str, str] = {}
        spec = importlib.util.find_spec("pipeline")
        src = REPO / "src"
        if spec is None or spec.origin is None:
            if not (src / "pipeline" / "__init__.py").exists():
                return False, "runbus not installed (pip install -e .)", {}
            extra["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p
            )
            where = f"{src} (PYTHONPATH)"
        else:
            where = str(Path(spec.origin).parent)
        probe = subprocess.run(
            [sys.executable, "-c", "import pipeline; pipeline.init"],
            env={**os.environ, **extra},
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            return False, f"runbus not usable: {last}", {}
        return True, f"pipeline from {where}", extra
    if importlib.util.find_spec(tracker.module) is None:
        return False, f"{name} not installed", {}
    version = importlib.metadata.version(tracker.dist) if tracker.dist else "?"
    note = f"{tracker.dist} {version}"
    if tracker.pinned and version != tracker.pinned:
        note += f" (benchmark written for {tracker.pinned})"
    return True, note, {}


# ---------------------------------------------------------------------------
# Child side


def _maxrss_kib(who: int) -> int:
    return int(resource.getrusage(who).ru_maxrss)  # KiB on Linux


def dir_bytes(path: Path) -> tuple[int, int, list[tuple[str, int]]]:
    """(total bytes of regular files, file count, the 5 largest files) under ``path``."""
    total = 0
    files: list[tuple[str, int]] = []
    for root, _dirs, names in os.walk(path):
        for n in names:
            p = os.path.join(root, n)
            st = os.lstat(p)
            if not os.path.islink(p):
                total += st.st_size
                files.append((os.path.relpath(p, path), st.st_size))
    files.sort(key=lambda f: -f[1])
    return total, len(files), files[:5]


def _tree_rss_kib() -> int | None:
    """RSS of this process plus all its live descendants now (KiB), if psutil is there."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    total = int(me.memory_info().rss)
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += int(child.memory_info().rss)
    return total // 1024


def _bare_loop(orjson: Any, out: Path, steps: int, make: Callable[[], Row]) -> Result:
    """The limit: the same rows written by hand, one orjson line each."""
    dumps = orjson.dumps
    opt = orjson.OPT_APPEND_NEWLINE
    now = time.time
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    f = open(out / "rows.jsonl", "wb")  # noqa: SIM115 - open/close are what is timed
    start = now()
    write = f.write
    t1 = time.perf_counter()
    for step in range(steps):
        row: dict[str, Any] = make()
        ts = now()
        row["_step"] = step
        row["_timestamp"] = ts
        row["_runtime"] = ts - start
        write(dumps(row, option=opt))
    t2 = time.perf_counter()
    f.flush()
    f.close()
    t3 = time.perf_counter()
    return {"init_s": t1 - t0, "loop_s": t2 - t1, "finish_s": t3 - t2, "total_s": t3 - t0}


def _timer_floor_ns(samples: int = 20000) -> int:
    """Median cost of two perf_counter_ns calls around a no-op Python call."""

    def nop(row: Row) -> None:
        return None

    pc = time.perf_counter_ns
    row = row_maker(1)()
    buf = array.array("q", bytes(8 * samples))
    for i in range(samples):
        a = pc()
        nop(row)
        b = pc()
        buf[i] = b - a
    return int(statistics.median(buf))


def percentiles(values: Sequence[int], qs: Sequence[float]) -> dict[str, int]:
    """Nearest-rank percentiles of ``values`` keyed ``p50``, ``p99.9``...; plus ``max``."""
    s = sorted(values)
    n = len(s)
    out: dict[str, int] = {}
    for q in qs:
        out[f"p{q:g}"] = s[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))]
    out["max"] = s[-1]
    return out


LATENCY_QS = (50.0, 90.0, 99.0, 99.9)


def _child(task: Result) -> Result:
    """Run one measurement described by ``task`` in this (fresh) process."""
    tracker = TRACKERS[task["tracker"]]
    kind: str = task["kind"]
    tmp = Path(task["tmp"])
    out = tmp / "out"
    os.environ.update(tracker.env(tmp, out))
    for var in _SCRUB:
        os.environ.pop(var, None)
    res: Result = {"tracker": tracker.name, "kind": kind, "steps": task.get("steps", 0)}

    rss_start = _maxrss_kib(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    mod = importlib.import_module(tracker.module)
    res["import_s"] = time.perf_counter() - t0
    res["rss_after_import_kib"] = _maxrss_kib(resource.RUSAGE_SELF)
    res["rss_interpreter_kib"] = rss_start
    if kind == "import":
        return res

    steps: int = task["steps"]
    make = row_maker(task.get("seed", 0))
    if tracker.name == "bare":
        res.update(_bare_loop(mod, out, steps, make))
    else:
        floor = _timer_floor_ns() if kind == "latency" else None
        t1 = time.perf_counter()
        opened = tracker.open(mod, out)
        t2 = time.perf_counter()
        log = opened.log
        if kind == "latency":
            pc = time.perf_counter_ns
            buf = array.array("q", bytes(8 * steps))
            for i in range(steps):
                row = make()
                a = pc()
                log(row)
                b = pc()
                buf[i] = b - a
            res["latency_ns"] = percentiles(buf, LATENCY_QS)
            res["latency_mean_ns"] = sum(buf) / steps
            res["timer_floor_ns"] = floor
        elif kind == "profile":
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(steps):
                log(make())
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
            res["profile"] = text.getvalue()
        else:
            for _ in range(steps):
                log(make())
        t3 = time.perf_counter()
        opened.finish()
        t4 = time.perf_counter()
        res["rss_tree_after_finish_kib"] = _tree_rss_kib()
        t5 = time.perf_counter()
        if opened.after is not None:
            opened.after()
        res["after_s"] = time.perf_counter() - t5
        res.update(init_s=t2 - t1, loop_s=t3 - t2, finish_s=t4 - t3, total_s=t4 - t1)
    res["rss_self_kib"] = _maxrss_kib(resource.RUSAGE_SELF)
    res["rss_children_kib"] = _maxrss_kib(resource.RUSAGE_CHILDREN)
    total, count, largest = dir_bytes(out)
    res.update(bytes=total, files=count, largest_files=largest)
    return res


def child_main(argv: Sequence[str]) -> int:
    task: Result = json.loads(argv[0])
    res = _child(task)
    res["done_at"] = time.time()
    Path(task["result"]).write_text(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------
# Parent side


def spawn(
    task: Result,
    *,
    extra_env: dict[str, str] | None = None,
    timeout: float = 600.0,
    keep: bool = False,
    python: str = sys.executable,
) -> Result:
    """Run ``task`` in a fresh child process, in a fresh temp dir; return its result.

    A failed child gives ``{"error": ...}`` with the tail of its output. The child's
    whole process group is killed on timeout (wandb starts a service process).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"runbus-bench-{task['tracker']}-"))
    result_path = tmp / "result.json"
    full = {**task, "tmp": str(tmp), "result": str(result_path)}
    env = {**os.environ, **(extra_env or {})}
    log_path = tmp / "child-output.txt"
    res: Result
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [python, str(WORKLOAD), json.dumps(full)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        reaped = time.time()
    with contextlib.suppress(ProcessLookupError):
        # Anything the child left running in its session (a tracker's service).
        os.killpg(proc.pid, signal.SIGKILL)
    if rc == 0 and result_path.exists():
        res = json.loads(result_path.read_text())
        res["exit_s"] = reaped - res.pop("done_at")
    else:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
        why = f"timed out after {timeout:.0f}s" if rc is None else f"exit status {rc}"
        res = {"tracker": task["tracker"], "kind": task["kind"], "error": why, "output": tail}
    if keep:
        res["tmp"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def import_profile(module: str, extra_env: dict[str, str], top: int = 10) -> list[str]:
    """The modules with the largest self time under ``python -X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env={**os.environ, **extra_env},
        capture_output=True,
        text=True,
        check=False,
        cwd=tempfile.gettempdir(),
    )
    rows: list[tuple[int, int, str]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) == 3:
            rows.append((int(parts[0]), int(parts[1]), parts[2].strip()))
    rows.sort(key=lambda r: -r[0])
    return [
        f"{name}: self {s / 1000:.1f} ms, cumulative {c / 1000:.1f} ms" for s, c, name in rows[:top]
    ]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def cpu_model() -> str:
    """The CPU's model name, where /proc/cpuinfo says it ("" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info() -> Result:
    model = cpu_model()
    return {
        "runbus": repo_state(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def repo_state() -> str:
    """This checkout's commit, and how many files under src/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}" + (f" + {len(dirty)} changed file(s) under src/" if dirty else "")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def fmt_s(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.3f} s"


def fmt_rss(kib: float | None) -> str:
    """A ru_maxrss figure (KiB) in MB (10^6 bytes), the unit of the goals."""
    return "n/a" if kib is None else f"{kib * 1024 / 1e6:.1f} MB"


def fmt_mb(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1e6:.2f} MB"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def write_json(name: str, data: Result) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    (OUT_DIR / f"{name}-latest.json").write_text(json.dumps(data, indent=2))
    return path


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
