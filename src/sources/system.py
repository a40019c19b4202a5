"""The system sampler: CPU, memory, disk, network and NVIDIA GPUs every few seconds.

:func:`run_sampler` is a bus source. Each sample is taken on a worker thread
(psutil reads ``/proc`` and NVML talks to the driver: both block), so the
pipeline's loop and the user's ``log()`` never wait for it. Samples become
``Stats`` events on their own timeline beside the history
(``read_run(...).system``); GPU names, memory and driver versions go into the
run's metadata once, at start.

Rates and percentages are computed from counter deltas between samples that
this module keeps itself, not with ``psutil.cpu_percent()``: that function
keeps its state in the psutil module, which would be shared with (and
disturbed by) any other code in the process that calls it, other runs
included. Metric names and units are listed in docs/system-metrics.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psutil
from anyio.streams.memory import MemoryObjectSendStream

from pipeline import events as ev
from pipeline.runinfo import RunInfo
from sources.nvml import Gpus

log = logging.getLogger("runbus")

#: How long shutdown waits for a sample in flight (or NVML's shutdown) to end.
_CLOSE_TIMEOUT = 2.0
#: The shortest interval (the ``system_interval`` setting enforces it too).
MIN_INTERVAL = 0.1

# Linux counts guest time inside user and nice already (as psutil and htop do).
_GUEST_FIELDS = ("guest", "guest_nice")


def _busy_total(t: Any) -> tuple[float, float]:
    """Busy and total CPU seconds of one ``cpu_times`` reading (idle and iowait are idle)."""
    total = sum(t)
    for name in _GUEST_FIELDS:
        total -= getattr(t, name, 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def _percent(part: float, whole: float) -> float:
    if whole <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * part / whole)), 2)


def _sysfs_device(path: Path) -> str | None:
    """The block device holding ``path``, by its device number (Linux)."""
    try:
        dev = os.stat(path).st_dev
        link = os.readlink(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    except (OSError, AttributeError):
        # btrfs, overlayfs and network file systems have no block device of
        # their own (anonymous device numbers); other OSes have no /sys.
        return None
    return os.path.basename(link)


def _mount_device(path: Path) -> str | None:
    """The device of the longest mount point above ``path`` (any OS psutil supports)."""
    try:
        where = os.path.realpath(path)
        best: tuple[int, str] | None = None
        for part in psutil.disk_partitions(all=False):
            mp = part.mountpoint
            inside = where == mp or where.startswith(mp.rstrip(os.sep) + os.sep)
            if inside and part.device and (best is None or len(mp) > best[0]):
                best = (len(mp), part.device)
    except Exception:
        return None
    if best is None:
        return None
    # /dev/mapper/vg-root is a link to /dev/dm-0, the name the counters use.
    return os.path.basename(os.path.realpath(best[1]))


def disk_of(path: Path) -> str | None:
    """The name in ``psutil.disk_io_counters(perdisk=True)`` of the disk holding ``path``.

    ``None`` where psutil cannot map it (network or overlay file systems, some
    OSes); the sampler then counts every disk.
    """
    try:
        names = set(psutil.disk_io_counters(perdisk=True) or {})
    except Exception:
        return None
    for name in (_sysfs_device(path), _mount_device(path)):
        if name is not None and name in names:
            return name
    return None


def _loopback_nics() -> frozenset[str]:
    try:
        stats = psutil.net_if_stats()
    except Exception:
        return frozenset({"lo"})
    found = {n for n, s in stats.items() if "loopback" in (getattr(s, "flags", "") or "")}
    # Older psutil has no flags; "lo" is Linux's name, "lo0" the BSDs' and macOS's.
    return frozenset(found or {"lo", "lo0"} & set(stats))


class SystemSampler:
    """Takes system samples; every method blocks, so call them from a worker thread.

    :meth:`start` takes the baselines (and opens NVML), :meth:`sample` returns
    one sample's metrics, :meth:`close` releases NVML. ``close`` may be called
    from another thread while a sample is in flight: NVML is then shut down
    by whichever of the two finishes last. No method raises for a metric it
    cannot read: the metric is left out and one debug message says why.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        process_tree: bool = False,
        gpu: bool = True,
        nvml: Any = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.process_tree = process_tree
        self.gpu = gpu
        self._nvml_lib = nvml
        self.gpus: Gpus | None = None
        #: The disk the read/write counters follow (``None``: all disks).
        self.disk: str | None = None
        self._proc = psutil.Process()
        self._ncpu = psutil.cpu_count() or 1
        self._wall = 0.0  # monotonic time of the last sample
        self._epoch = 0.0  # the same moment, epoch seconds (process start times are)
        self._cpu: list[tuple[float, float]] = []
        # (pid, create time) -> CPU seconds at the last sample: the create time
        # keeps a reused pid from inheriting a dead process's baseline.
        self._proc_cpu: dict[tuple[int, float], float] = {}
        self._disk0: tuple[int, int] | None = None
        self._net0: tuple[int, int] | None = None
        self._loopback: frozenset[str] = frozenset()
        self._failed: set[str] = set()
        self._lock = threading.Lock()
        self._closing = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Take the baselines and open NVML; the metadata to record (GPUs), if any."""
        meta: dict[str, Any] = {}
        with self._lock:
            if self._closing:
                return meta
            self._wall = time.monotonic()
            self._epoch = time.time()
            for name, part in (
                ("cpu", self._start_cpu),
                ("process", self._start_process),
                ("disk", self._start_disk),
                ("network", self._start_network),
            ):
                try:
                    part()
                except Exception as exc:
                    self._fail_once(name, exc)
            if self.gpu:
                self.gpus = Gpus.open(self._nvml_lib)
                if self.gpus is not None:
                    meta = self.gpus.metadata()
        self._close_if_asked()
        return meta

    def _start_cpu(self) -> None:
        self._cpu = self._read_cpu()

    def _start_process(self) -> None:
        self._proc_cpu = dict(self._read_procs()[0])

    def _start_disk(self) -> None:
        self.disk = disk_of(self.run_dir)
        if self.disk is None:
            log.debug(
                "runbus: disk read/write metrics count every disk (none found for %s)", self.run_dir
            )
        self._disk0 = self._read_disk()

    def _start_network(self) -> None:
        self._loopback = _loopback_nics()
        self._net0 = self._read_net()

    def close(self) -> None:
        """Release NVML (now, or when the sample in flight ends); idempotent."""
        self._closing = True
        self._close_if_asked()

    def _close_if_asked(self) -> None:
        # Called by close() and after each sample, always after the lock is
        # released: whichever of the two runs last finds the lock free.
        if not self._closing or not self._lock.acquire(blocking=False):
            return
        try:
            if not self._closed:
                self._closed = True
                if self.gpus is not None:
                    self.gpus.close()
        finally:
            self._lock.release()

    # -- sampling --------------------------------------------------------------

    def sample(self) -> tuple[float, dict[str, Any]]:
        """One sample: (epoch seconds, metrics). Never raises; empty once closed."""
        with self._lock:
            if self._closing:
                values: dict[str, Any] = {}
                ts = time.time()
            else:
                ts, values = self._sample()
        self._close_if_asked()
        return ts, values

    def _sample(self) -> tuple[float, dict[str, Any]]:
        out: dict[str, Any] = {}
        ts = time.time()
        now = time.monotonic()
        elapsed = now - self._wall
        since = self._epoch
        self._wall, self._epoch = now, ts
        pids: set[int] = {self._proc.pid}
        try:
            pids |= self._sample_process(out, elapsed, since)
        except Exception as exc:
            self._fail_once("process", exc)
        parts: tuple[tuple[str, Callable[[dict[str, Any]], None]], ...] = (
            ("cpu", self._sample_cpu),
            ("memory", self._sample_memory),
            ("swap", self._sample_swap),
            ("disk", self._sample_disk),
            ("network", self._sample_network),
        )
        for name, part in parts:
            try:
                part(out)
            except Exception as exc:
                self._fail_once(name, exc)
        if self.gpus is not None:
            out.update(self.gpus.sample(pids))
        return ts, out

    def _fail_once(self, what: str, exc: BaseException) -> None:
        if what not in self._failed:
            self._failed.add(what)
            log.debug("runbus: system metrics: cannot read %s (%r)", what, exc)

    # process -----------------------------------------------------------------

    def _read_procs(self) -> tuple[list[tuple[tuple[int, float], float]], list[Any]]:
        """CPU seconds per process of the tree (or this process), and the processes."""
        procs = [self._proc]
        if self.process_tree:
            with contextlib.suppress(psutil.Error):
                procs.extend(self._proc.children(recursive=True))
        cpu: list[tuple[tuple[int, float], float]] = []
        alive = []
        for p in procs:
            try:
                t = p.cpu_times()
                cpu.append(((p.pid, p.create_time()), t.user + t.system))
                alive.append(p)
            except psutil.Error:
                continue  # it ended (or is not ours) since we listed it
        return cpu, alive

    def _sample_process(self, out: dict[str, Any], elapsed: float, since: float) -> set[int]:
        cpu, procs = self._read_procs()
        prev = self._proc_cpu
        used = 0.0
        for key, seconds in cpu:
            before = prev.get(key)
            if before is not None:
                used += max(0.0, seconds - before)
            elif key[1] >= since:
                used += seconds  # started since the last sample: all of it is new
            # else: first seen, started earlier (the tree grew): this is its baseline
        self._proc_cpu = dict(cpu)
        rss = threads = fds = files = 0
        has_fds = hasattr(self._proc, "num_fds")  # POSIX only
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    threads += p.num_threads()
                    if has_fds:
                        fds += p.num_fds()
                files += len(p.open_files())
            except psutil.Error:
                continue
        if elapsed > 0:
            cores = used / elapsed
            out["system/proc/cpu_percent"] = _percent(cores, self._ncpu)
            out["system/proc/cpu_cores"] = round(cores, 3)
        out["system/proc/rss_bytes"] = rss
        out["system/proc/threads"] = threads
        out["system/proc/open_files"] = files
        if has_fds:
            out["system/proc/fds"] = fds
        if self.process_tree:
            out["system/proc/processes"] = len(procs)
        return {p.pid for p in procs}

    # machine -----------------------------------------------------------------

    @staticmethod
    def _read_cpu() -> list[tuple[float, float]]:
        return [_busy_total(t) for t in psutil.cpu_times(percpu=True)]

    def _sample_cpu(self, out: dict[str, Any]) -> None:
        cpu = self._read_cpu()
        prev = self._cpu
        self._cpu = cpu
        if len(cpu) != len(prev):
            return  # a CPU went on or offline: the next sample has a baseline
        busy_all = total_all = 0.0
        for i, ((busy, total), (busy0, total0)) in enumerate(zip(cpu, prev, strict=True)):
            db, dt = busy - busy0, total - total0
            busy_all += db
            total_all += dt
            out[f"system/cpu/core_{i}"] = _percent(db, dt)
        out["system/cpu/percent"] = _percent(busy_all, total_all)

    @staticmethod
    def _sample_memory(out: dict[str, Any]) -> None:
        vm = psutil.virtual_memory()
        # total - available, so that used / total is the percent psutil reports.
        out["system/memory/used_bytes"] = int(vm.total - vm.available)
        out["system/memory/available_bytes"] = int(vm.available)
        out["system/memory/percent"] = round(float(vm.percent), 2)

    @staticmethod
    def _sample_swap(out: dict[str, Any]) -> None:
        sw = psutil.swap_memory()
        out["system/swap/used_bytes"] = int(sw.used)
        out["system/swap/percent"] = round(float(sw.percent), 2)

    def _read_disk(self) -> tuple[int, int] | None:
        try:
            if self.disk is not None:
                c = (psutil.disk_io_counters(perdisk=True) or {}).get(self.disk)
            else:
                c = psutil.disk_io_counters(perdisk=False)
        except Exception:
            return None
        return None if c is None else (int(c.read_bytes), int(c.write_bytes))

    def _sample_disk(self, out: dict[str, Any]) -> None:
        usage = psutil.disk_usage(str(self.run_dir))
        out["system/disk/percent"] = round(float(usage.percent), 2)
        out["system/disk/free_bytes"] = int(usage.free)
        now = self._read_disk()
        if now is not None and self._disk0 is not None:
            out["system/disk/read_bytes"] = max(0, now[0] - self._disk0[0])
            out["system/disk/write_bytes"] = max(0, now[1] - self._disk0[1])

    def _read_net(self) -> tuple[int, int]:
        sent = recv = 0
        for name, c in psutil.net_io_counters(pernic=True).items():
            # Loopback traffic (a local server, NCCL on one host) never leaves
            # the machine; counting it would double every byte.
            if name not in self._loopback:
                sent += c.bytes_sent
                recv += c.bytes_recv
        return sent, recv

    def _sample_network(self, out: dict[str, Any]) -> None:
        sent, recv = self._read_net()
        if self._net0 is None:
            self._net0 = (sent, recv)
        out["system/network/sent_bytes"] = max(0, sent - self._net0[0])
        out["system/network/recv_bytes"] = max(0, recv - self._net0[1])


async def run_sampler(
    send: MemoryObjectSendStream[list[ev.Item]],
    *,
    run: RunInfo,
    interval: float,
    process_tree: bool,
    gpu: bool,
    nvml: Any = None,
) -> None:
    """Send a ``Stats`` event every ``interval`` seconds until cancelled (a bus source).

    Once, at start, a ``Metadata`` event with the GPUs when there are any.
    ``nvml``: the NVML library to use instead of ``pynvml`` (e.g. a
    :class:`sources.nvml.FakeNvml`). Cancellation is prompt: a sample in
    flight is abandoned (its thread finishes on its own) and NVML is shut
    down within a bounded time.
    """
    # Settings validate the interval; this keeps a direct caller's 0 from spinning.
    interval = max(float(interval), MIN_INTERVAL)
    sampler = SystemSampler(run.dir, process_tree=process_tree, gpu=gpu, nvml=nvml)
    try:
        meta = await anyio.to_thread.run_sync(sampler.start, abandon_on_cancel=True)
        if meta:
            await send.send([ev.Metadata(run.id, 0, time.time(), meta)])
        deadline = anyio.current_time()
        while True:
            # A fixed schedule, so samples do not drift by the time each takes; after
            # a stall (a suspended machine) it skips ahead instead of bursting.
            deadline = max(deadline + interval, anyio.current_time())
            await anyio.sleep_until(deadline)
            ts, values = await anyio.to_thread.run_sync(sampler.sample, abandon_on_cancel=True)
            if values:
                await send.send([ev.Stats(run.id, 0, ts, ts - run.start_ts, values)])
    finally:
        # Shielded so NVML is shut down even though the source is being
        # cancelled; bounded so a hung driver cannot hold up finish().
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            await anyio.to_thread.run_sync(sampler.close, abandon_on_cancel=True)
