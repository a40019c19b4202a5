"""NVIDIA GPUs through NVML, for the system sampler: a thin, quiet wrapper on pynvml.

Every call here blocks (NVML talks to the driver), so the sampler makes them
on a worker thread. A machine without the ``pynvml`` module, without the
NVIDIA driver or library, or without a GPU is normal: :meth:`Gpus.open`
returns ``None`` and one debug message on the ``runbus`` logger says why. An
NVML error later in the run turns the GPU part off the same way. A metric one
GPU does not support (power on some boards, clocks under MIG) is left out of
that GPU's samples, and the rest carry on.

``pynvml`` is imported only when a run samples GPUs, through
:func:`load_library`; tests pass a :class:`FakeNvml` instead.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("runbus")

# NVML return codes that mean "this GPU cannot answer this question": the value
# is left out and never asked for again; any other error stops the GPU part.
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_FUNCTION_NOT_FOUND = 13  # an older driver lacks the function
_FIELD_ERRORS = frozenset({_NOT_SUPPORTED, _NO_PERMISSION, _FUNCTION_NOT_FOUND})

# pynvml's constants, used when a library object does not define them.
_TEMPERATURE_GPU = 0
_CLOCK_SM = 1
_CLOCK_MEM = 2


def load_library() -> Any:
    """The ``pynvml`` module (from the ``nvidia-ml-py`` distribution), or ``None``.

    Never raises: a missing or broken module is a machine without GPU metrics.
    """
    module = sys.modules.get("pynvml")
    if module is not None:
        return module
    try:
        # The old ``pynvml`` distribution warns on import that it is deprecated;
        # that is the user's environment, not something a run should print.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pynvml
    except Exception:
        return None
    return pynvml


def _text(value: Any) -> str:
    # Older pynvml versions return bytes for names and versions.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version number as text: ``12040`` -> ``"12.4"``."""
    return f"{version // 1000}.{version % 1000 // 10}"


class _Stop(Exception):
    """The GPU part must stop; the message says why."""


class Gpus:
    """An open NVML session over every NVIDIA GPU of the machine.

    Not thread-safe: one sampler thread at a time. :meth:`sample` and
    :meth:`metadata` never raise; after an NVML error the session closes
    itself (one debug message) and later samples are empty.
    """

    def __init__(self, lib: Any, handles: list[Any]) -> None:
        self._lib = lib
        self._handles = handles
        self._error: type[BaseException] = lib.NVMLError
        self._unsupported: set[tuple[int, str]] = set()
        self._temperature = getattr(lib, "NVML_TEMPERATURE_GPU", _TEMPERATURE_GPU)
        self._clock_sm = getattr(lib, "NVML_CLOCK_SM", _CLOCK_SM)
        self._clock_mem = getattr(lib, "NVML_CLOCK_MEM", _CLOCK_MEM)
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def open(cls, lib: Any = None) -> Gpus | None:
        """Start NVML and find the GPUs; ``None`` (and one debug message) if there are none.

        ``lib`` is the NVML module to use (default: :func:`load_library`), e.g. a
        :class:`FakeNvml`. Never raises.
        """
        if lib is None:
            lib = load_library()
            if lib is None:
                log.debug(
                    "runbus: GPU metrics off: the pynvml module is not installed "
                    "(pip install nvidia-ml-py)"
                )
                return None
        try:
            lib.nvmlInit()
        except Exception as exc:
            log.debug("runbus: GPU metrics off: NVML did not start (%s)", _describe(exc))
            return None
        try:
            count = int(lib.nvmlDeviceGetCount())
            handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            log.debug("runbus: GPU metrics off: NVML could not list GPUs (%s)", _describe(exc))
            _shutdown(lib)
            return None
        if not handles:
            log.debug("runbus: GPU metrics off: NVML found no NVIDIA GPU")
            _shutdown(lib)
            return None
        return cls(lib, handles)

    @property
    def count(self) -> int:
        """How many GPUs the session samples (0 once it has stopped)."""
        return 0 if self._closed else len(self._handles)

    def metadata(self) -> dict[str, Any]:
        """Names, memory and UUIDs of the GPUs, driver and CUDA versions (for run metadata)."""
        if self._closed:
            return {}
        lib = self._lib
        try:
            gpus = []
            for i, h in enumerate(self._handles):
                info: dict[str, Any] = {"index": i, "name": _text(lib.nvmlDeviceGetName(h))}
                mem = self._field(i, "memory", lib.nvmlDeviceGetMemoryInfo, h)
                if mem is not None:
                    info["memory_total_bytes"] = int(mem.total)
                if hasattr(lib, "nvmlDeviceGetUUID"):
                    uuid = self._field(i, "uuid", lib.nvmlDeviceGetUUID, h)
                    if uuid is not None:
                        info["uuid"] = _text(uuid)
                gpus.append(info)
            out: dict[str, Any] = {"gpu": gpus, "gpu_count": len(gpus)}
            driver = self._field(-1, "driver", lib.nvmlSystemGetDriverVersion)
            if driver is not None:
                out["gpu_driver"] = _text(driver)
            cuda = self._field(-1, "cuda", lib.nvmlSystemGetCudaDriverVersion)
            if cuda is not None:
                out["cuda_version"] = cuda_version_text(int(cuda))
        except Exception as exc:
            self._stop(exc)
            return {}
        return out

    def sample(self, pids: Collection[int]) -> dict[str, Any]:
        """One reading of every GPU, as ``system/gpu_<i>/...`` metrics.

        ``pids``: the processes that count as this run's, for ``in_use`` and
        ``process_memory_bytes``. Empty once the session has stopped.
        """
        if self._closed:
            return {}
        out: dict[str, Any] = {}
        try:
            for i, h in enumerate(self._handles):
                self._sample_one(i, h, pids, out)
        except Exception as exc:
            self._stop(exc)
            return {}
        return out

    def _sample_one(self, i: int, h: Any, pids: Collection[int], out: dict[str, Any]) -> None:
        lib = self._lib
        get = self._field
        p = f"system/gpu_{i}/"
        util = get(i, "utilization", lib.nvmlDeviceGetUtilizationRates, h)
        if util is not None:
            out[p + "utilization_percent"] = int(util.gpu)
            out[p + "memory_busy_percent"] = int(util.memory)
        mem = get(i, "memory", lib.nvmlDeviceGetMemoryInfo, h)
        if mem is not None:
            used, total = int(mem.used), int(mem.total)
            out[p + "memory_used_bytes"] = used
            out[p + "memory_total_bytes"] = total
            if total > 0:
                out[p + "memory_percent"] = round(100.0 * used / total, 2)
        temp = get(i, "temperature", lib.nvmlDeviceGetTemperature, h, self._temperature)
        if temp is not None:
            out[p + "temperature_c"] = int(temp)
        power = get(i, "power", lib.nvmlDeviceGetPowerUsage, h)
        if power is not None:
            out[p + "power_watts"] = round(int(power) / 1000.0, 3)  # NVML gives milliwatts
            limit = get(i, "power_limit", lib.nvmlDeviceGetEnforcedPowerLimit, h)
            if limit is not None and int(limit) > 0:
                out[p + "power_limit_watts"] = round(int(limit) / 1000.0, 3)
                out[p + "power_percent"] = round(100.0 * int(power) / int(limit), 2)
        sm = get(i, "sm_clock", lib.nvmlDeviceGetClockInfo, h, self._clock_sm)
        if sm is not None:
            out[p + "sm_clock_mhz"] = int(sm)
        memclk = get(i, "memory_clock", lib.nvmlDeviceGetClockInfo, h, self._clock_mem)
        if memclk is not None:
            out[p + "memory_clock_mhz"] = int(memclk)
        # A process shows up in either list (compute: CUDA; graphics: GL/Vulkan,
        # and on some drivers CUDA contexts too), and may be in both.
        known = False
        found: set[int] = set()
        used_by_us = 0
        for key, fn_name in (
            ("compute processes", "nvmlDeviceGetComputeRunningProcesses"),
            ("graphics processes", "nvmlDeviceGetGraphicsRunningProcesses"),
        ):
            fn = getattr(lib, fn_name, None)
            procs = None if fn is None else get(i, key, fn, h)
            if procs is None:
                continue
            known = True
            for proc in procs:
                pid = int(proc.pid)
                if pid in pids and pid not in found:
                    found.add(pid)
                    on_gpu = getattr(proc, "usedGpuMemory", None)
                    # None (or NVML's "not available", 2**64 - 1) where the driver hides it.
                    if isinstance(on_gpu, int) and 0 <= on_gpu < 1 << 63:
                        used_by_us += on_gpu
        if known:
            out[p + "in_use"] = int(bool(found))
            if found:
                out[p + "process_memory_bytes"] = used_by_us

    def _field(self, i: int, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or ``None`` when GPU ``i`` does not support it (asked once)."""
        key = (i, name)
        if key in self._unsupported:
            return None
        try:
            return fn(*args)
        except self._error as exc:
            if getattr(exc, "value", None) not in _FIELD_ERRORS:
                raise
            self._unsupported.add(key)
            where = "NVML" if i < 0 else f"GPU {i}"
            log.debug("runbus: %s does not report %s (%s)", where, name, _describe(exc))
            return None

    def _stop(self, exc: BaseException) -> None:
        log.debug("runbus: GPU metrics off from now on: NVML failed (%s)", _describe(exc))
        self.close()

    def close(self) -> None:
        """Shut NVML down (``nvmlShutdown``); idempotent, never raises."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _shutdown(self._lib)


def _shutdown(lib: Any) -> None:
    try:
        lib.nvmlShutdown()
    except Exception as exc:
        log.debug("runbus: nvmlShutdown failed (%s)", _describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- a stand-in for tests -------------------------------------------------------


class FakeNvmlError(Exception):
    """What :class:`FakeNvml` raises: like ``pynvml.NVMLError``, with the NVML code in ``value``."""

    def __init__(self, value: int, message: str = "") -> None:
        super().__init__(value)
        self.value = value
        self.message = message or f"NVML error {value}"

    def __str__(self) -> str:
        return self.message


@dataclass
class FakeGpu:
    """One GPU as :class:`FakeNvml` reports it (NVML's units: bytes, mW, MHz, °C)."""

    name: str = "NVIDIA Fake 80GB"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    memory_total: int = 80 * 1024**3
    memory_used: int = 20 * 1024**3
    utilization: int = 50
    memory_utilization: int = 25
    temperature: int = 60
    power_mw: int = 200_000
    power_limit_mw: int = 400_000
    sm_clock: int = 1500
    memory_clock: int = 2600
    #: Compute processes on this GPU: pid -> bytes of GPU memory it uses.
    compute: dict[int, int | None] = field(default_factory=dict)
    #: Graphics processes on this GPU: pid -> bytes.
    graphics: dict[int, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _Util:
    gpu: int
    memory: int


@dataclass(frozen=True)
class _Memory:
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class _Proc:
    pid: int
    usedGpuMemory: int | None  # pynvml's field name


class FakeNvml:
    """A stand-in for the ``pynvml`` module: known values, errors on demand.

    Pass it where runbus takes an NVML library (``Gpus.open(lib=...)``,
    ``run_sampler(..., nvml=...)``). Change ``gpus`` at any time; put an
    exception in ``fail[name]`` (e.g. ``FakeNvml.error(999)``) to make the call
    ``name`` raise from then on. ``calls`` counts the calls by name.
    """

    NVMLError = FakeNvmlError
    NVML_TEMPERATURE_GPU = _TEMPERATURE_GPU
    NVML_CLOCK_SM = _CLOCK_SM
    NVML_CLOCK_MEM = _CLOCK_MEM
    NVML_ERROR_NOT_SUPPORTED = _NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = _NO_PERMISSION
    NVML_ERROR_FUNCTION_NOT_FOUND = _FUNCTION_NOT_FOUND
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_UNKNOWN = 999

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        driver: str = "550.54.15",
        cuda: int = 12040,
    ) -> None:
        self.gpus = [FakeGpu()] if gpus is None else gpus
        self.driver = driver
        self.cuda = cuda
        self.fail: dict[str, BaseException] = {}
        self.calls: dict[str, int] = {}
        self.initialised = False
        self._lock = threading.Lock()

    @staticmethod
    def error(value: int, message: str = "") -> FakeNvmlError:
        """An NVML error with code ``value`` (``NVML_ERROR_*``)."""
        return FakeNvmlError(value, message)

    def _call(self, name: str) -> None:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        exc = self.fail.get(name)
        if exc is not None:
            raise exc
        if name not in ("nvmlInit", "nvmlShutdown") and not self.initialised:
            raise FakeNvmlError(1, "Uninitialized")

    def _gpu(self, handle: int) -> FakeGpu:
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        """Start (counts; a failure set in ``fail`` raises)."""
        self._call("nvmlInit")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        """Stop."""
        self._call("nvmlShutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        """Number of GPUs."""
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        """The handle of GPU ``index`` (its index)."""
        self._call("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise FakeNvmlError(2, "Invalid Argument")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        """The GPU's name."""
        self._call("nvmlDeviceGetName")
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        """The GPU's UUID."""
        self._call("nvmlDeviceGetUUID")
        return self._gpu(handle).uuid

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Util:
        """Percent of time the GPU and its memory were busy."""
        self._call("nvmlDeviceGetUtilizationRates")
        g = self._gpu(handle)
        return _Util(g.utilization, g.memory_utilization)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        """Memory total, used and free, bytes."""
        self._call("nvmlDeviceGetMemoryInfo")
        g = self._gpu(handle)
        return _Memory(g.memory_total, g.memory_used, g.memory_total - g.memory_used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        """Degrees Celsius."""
        self._call("nvmlDeviceGetTemperature")
        return self._gpu(handle).temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        """Milliwatts drawn."""
        self._call("nvmlDeviceGetPowerUsage")
        return self._gpu(handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        """Milliwatts allowed."""
        self._call("nvmlDeviceGetEnforcedPowerLimit")
        return self._gpu(handle).power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: int, kind: int) -> int:
        """MHz of the SM (``NVML_CLOCK_SM``) or memory (``NVML_CLOCK_MEM``) clock."""
        self._call("nvmlDeviceGetClockInfo")
        g = self._gpu(handle)
        return g.sm_clock if kind == _CLOCK_SM else g.memory_clock

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_Proc]:
        """Compute processes on the GPU."""
        self._call("nvmlDeviceGetComputeRunningProcesses")
        return [_Proc(pid, used) for pid, used in self._gpu(handle).compute.items()]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[_Proc]:
        """Graphics processes on the GPU."""
        self._call("nvmlDeviceGetGraphicsRunningProcesses")
        return [_Proc(pid, used) for pid, used in self._gpu(handle).graphics.items()]

    def nvmlSystemGetDriverVersion(self) -> str:
        """The driver version."""
        self._call("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        """The CUDA version the driver supports, as NVML encodes it (12040: 12.4)."""
        self._call("nvmlSystemGetCudaDriverVersion")
        return self.cuda
