"""Run settings: keyword arguments validated by name, environment read in one place."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

NamePolicy = Literal["warn", "strict", "off"]
Mode = Literal["offline", "online", "disabled"]
QueuePolicy = Literal["block", "drop_newest"]
PipelinePlace = Literal["auto", "thread", "loop"]
ConsoleMode = Literal["wrap", "fd", "off"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Everything about a run that is not its identity.

    Pass as ``init(settings={...})`` or ``init(settings=Settings(...))``; each
    field also reads an environment variable (below), which explicit values
    override.
    """

    #: What to do with a metric name outside ``^[_a-zA-Z][_a-zA-Z0-9]*`` (``/``
    #: separated): warn once per name, raise ``ValueError``, or accept silently.
    #: ``RUNBUS_NAME_POLICY``.
    name_policy: NamePolicy = "warn"
    #: Seconds between automatic flushes of every sink (fsync for the disk sink).
    #: ``RUNBUS_FLUSH_INTERVAL``.
    flush_interval: float = 1.0
    #: Print nothing to the terminal (the stdout sink stays silent). ``RUNBUS_QUIET``.
    quiet: bool = False
    #: Extra sinks by entry point name (group ``runbus.sinks``), comma separated
    #: in ``RUNBUS_SINKS``.
    sinks: tuple[str, ...] = ()
    #: Log calls held for the pipeline before ``log()`` waits for it to catch up
    #: (from plain threads only; memory stays bounded). ``RUNBUS_MAX_BACKLOG``.
    max_backlog: int = 2048
    #: Bytes of logged media copies (images, video, audio arrays) waiting to be
    #: encoded before ``log()`` from a plain thread waits for the encoder.
    #: ``RUNBUS_MAX_MEDIA_BYTES``.
    max_media_bytes: int = 256 * 1024 * 1024
    #: Batches each sink's queue holds before its policy applies.
    queue_size: int = 4
    #: Deadline in seconds for each call into a sink (open, write, flush, close);
    #: a call past it counts as a failure.
    #: ``RUNBUS_SINK_TIMEOUT``.
    sink_timeout: float = 30.0
    #: Retries (with backoff and jitter) of a failing sink write or flush before
    #: the sink is stopped. Errors that cannot pass by retrying stop it at once.
    max_retries: int = 3
    #: zlib-compress event log frames (smaller files, more CPU). ``RUNBUS_COMPRESS``.
    compress: bool = False
    #: Where the pipeline runs: ``"thread"`` (its own thread and loop), ``"loop"``
    #: (tasks on the running asyncio loop; finish with ``await run.afinish()``), or
    #: ``"auto"``: the running loop when ``init()`` is called inside one, except in
    #: a Jupyter/IPython kernel, whose cells call ``finish()`` synchronously.
    #: ``RUNBUS_PIPELINE``.
    pipeline: PipelinePlace = "auto"
    #: Seconds ``finish()`` waits for an online run's upload before it says what
    #: is left and how to send it (``runbus sync``). ``RUNBUS_UPLOAD_TIMEOUT``.
    upload_timeout: float = 30.0
    #: Sample system metrics (CPU, memory, disk, network, GPUs). ``RUNBUS_SYSTEM``.
    system: bool = True
    #: Seconds between system samples (at least 0.1). ``RUNBUS_SYSTEM_INTERVAL``.
    system_interval: float = 10.0
    #: Count the whole process tree (e.g. DataLoader workers) in the process
    #: metrics, not only this process. ``RUNBUS_SYSTEM_PROCESS_TREE``.
    system_process_tree: bool = False
    #: Sample NVIDIA GPUs through NVML (skipped quietly where there are none).
    #: ``RUNBUS_GPU``.
    gpu: bool = True
    #: Console capture: ``"wrap"`` tees Python-level writes to stdout/stderr,
    #: ``"fd"`` also catches subprocesses and C extensions (file-descriptor
    #: level), ``"off"`` leaves the console alone. ``RUNBUS_CONSOLE``.
    console: ConsoleMode = "wrap"
    #: Longest console line kept in ``output.log``; longer ones are cut with a note.
    #: ``RUNBUS_CONSOLE_MAX_LINE``.
    console_max_line: int = 16384
    #: Record git commit, branch, remote, dirty flag and ``diff.patch``. ``RUNBUS_GIT``.
    git: bool = True
    #: Bytes of ``diff.patch`` kept at most; a larger diff is cut with a note.
    #: ``RUNBUS_DIFF_LIMIT``.
    diff_limit: int = 10 * 1024 * 1024
    #: Write ``requirements.txt`` of the environment. ``RUNBUS_REQUIREMENTS``.
    requirements: bool = True
    #: Record host, user, OS, Python, working directory, CPU, memory,
    #: ``CUDA_VISIBLE_DEVICES`` and SLURM variables in the metadata (GPU details
    #: come from the system sampler). ``RUNBUS_METADATA``.
    metadata: bool = True

    def __post_init__(self) -> None:
        if self.name_policy not in ("warn", "strict", "off"):
            raise ValueError(
                f"settings.name_policy must be 'warn', 'strict' or 'off', not {self.name_policy!r}"
            )
        _positive("flush_interval", self.flush_interval)
        _positive("sink_timeout", self.sink_timeout)
        _positive("upload_timeout", self.upload_timeout)
        for name in ("max_backlog", "queue_size", "max_retries"):
            value = getattr(self, name)
            least = 0 if name == "max_retries" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(
                    f"settings.{name} must be an integer of at least {least}, not {value!r}"
                )
        if self.pipeline not in ("auto", "thread", "loop"):
            raise ValueError(
                f"settings.pipeline must be 'auto', 'thread' or 'loop', not {self.pipeline!r}"
            )
        if self.console not in ("wrap", "fd", "off"):
            raise ValueError(
                f"settings.console must be 'wrap', 'fd' or 'off', not {self.console!r}"
            )
        interval = self.system_interval
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0.1:
            raise ValueError(
                f"settings.system_interval must be at least 0.1 seconds, not {interval!r}"
            )
        for name in ("console_max_line", "diff_limit", "max_media_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"settings.{name} must be a positive integer, not {value!r}")
        if not all(isinstance(s, str) and s for s in self.sinks):
            raise ValueError(f"settings.sinks must be entry point names, not {self.sinks!r}")

    @classmethod
    def resolve(cls, given: Settings | Mapping[str, Any] | None = None) -> Settings:
        """Defaults, then the environment, then ``given`` (which wins)."""
        values: dict[str, Any] = _from_env()
        if isinstance(given, Settings):
            explicit = {
                f.name: getattr(given, f.name)
                for f in dataclasses.fields(cls)
                if getattr(given, f.name) != f.default
            }
            values.update(explicit)
        elif given is not None:
            if not isinstance(given, Mapping):
                raise TypeError(
                    f"settings must be a pipeline.Settings or a dict, not {type(given).__name__}"
                )
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(
                    f"unknown setting(s) {', '.join(map(repr, unknown))}; "
                    f"known settings: {', '.join(sorted(known))}"
                )
            values.update(given)
        if "sinks" in values and isinstance(values["sinks"], list | str):
            raw = values["sinks"]
            values["sinks"] = tuple(
                s.strip() for s in (raw.split(",") if isinstance(raw, str) else raw) if s.strip()
            )
        return cls(**values)


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"settings.{name} must be a positive number of seconds, not {value!r}")


def _env_bool(var: str) -> bool | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"${var}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def _env_number(var: str, kind: type[int] | type[float]) -> int | float | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    try:
        return kind(raw)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ValueError(f"${var}={raw!r} is not {noun}") from None


def _from_env() -> dict[str, Any]:
    found: dict[str, Any] = {}
    if (policy := os.environ.get("RUNBUS_NAME_POLICY")) is not None:
        found["name_policy"] = policy.strip().lower()
    if (place := os.environ.get("RUNBUS_PIPELINE")) is not None:
        found["pipeline"] = place.strip().lower()
    if (console := os.environ.get("RUNBUS_CONSOLE")) is not None:
        found["console"] = console.strip().lower()
    for key, var, kind in (
        ("flush_interval", "RUNBUS_FLUSH_INTERVAL", float),
        ("sink_timeout", "RUNBUS_SINK_TIMEOUT", float),
        ("upload_timeout", "RUNBUS_UPLOAD_TIMEOUT", float),
        ("max_backlog", "RUNBUS_MAX_BACKLOG", int),
        ("system_interval", "RUNBUS_SYSTEM_INTERVAL", float),
        ("console_max_line", "RUNBUS_CONSOLE_MAX_LINE", int),
        ("diff_limit", "RUNBUS_DIFF_LIMIT", int),
        ("max_media_bytes", "RUNBUS_MAX_MEDIA_BYTES", int),
    ):
        if (num := _env_number(var, kind)) is not None:
            found[key] = num
    for key, var in (
        ("quiet", "RUNBUS_QUIET"),
        ("compress", "RUNBUS_COMPRESS"),
        ("system", "RUNBUS_SYSTEM"),
        ("system_process_tree", "RUNBUS_SYSTEM_PROCESS_TREE"),
        ("gpu", "RUNBUS_GPU"),
        ("git", "RUNBUS_GIT"),
        ("requirements", "RUNBUS_REQUIREMENTS"),
        ("metadata", "RUNBUS_METADATA"),
    ):
        if (flag := _env_bool(var)) is not None:
            found[key] = flag
    if (sinks := os.environ.get("RUNBUS_SINKS")) is not None:
        found["sinks"] = sinks
    return found


def runs_dir(given: str | os.PathLike[str] | None) -> Path:
    """Where runs go: ``dir=``, else ``$RUNBUS_DIR``, else ``./runs``."""
    if given is not None:
        return Path(given)
    env = os.environ.get("RUNBUS_DIR")
    return Path(env) if env else Path("runs")


def run_mode(given: str | None, server: str | None) -> Mode:
    """``mode=``, else ``$RUNBUS_MODE``, else online when a server is configured."""
    mode = given if given is not None else os.environ.get("RUNBUS_MODE")
    if mode is None:
        return "online" if server else "offline"
    mode = mode.strip().lower()
    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"mode must be 'offline', 'online' or 'disabled', not {mode!r}")
    return mode  # type: ignore[return-value]


def server_url(given: str | None) -> str | None:
    """``server=``, else ``$RUNBUS_SERVER``."""
    return given if given is not None else (os.environ.get("RUNBUS_SERVER") or None)


def api_key(given: str | None) -> str | None:
    """``api_key=``, else ``$RUNBUS_API_KEY``."""
    return given if given is not None else (os.environ.get("RUNBUS_API_KEY") or None)
