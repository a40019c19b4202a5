"""The system sampler: real psutil values, the source on its own, and through a real run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import pipeline
from pipeline import events as ev
from pipeline.names import is_valid
from pipeline.reader import RunData
from pipeline.runinfo import RunInfo
from sources import nvml, system
from sources.nvml import FakeGpu, FakeNvml
from sources.system import SystemSampler, run_sampler

SRC = str(Path(__file__).resolve().parents[2] / "src")
#: A bound on every wait: a hang fails the test instead of stalling the suite.
HANG = 30.0
GiB = 1024**3
SETTINGS = {"quiet": True, "system_interval": 0.1, "console": "off"}


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="runbus")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """A one-GPU fake NVML that this process (the run's) uses, in place of pynvml."""
    lib = FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-40GB", compute={os.getpid(): 3 * GiB})])
    monkeypatch.setattr(nvml, "load_library", lambda: lib)
    return lib


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A child process that lives until the test ends (a stand-in DataLoader worker)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _debug(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "runbus" and text in r.getMessage()]


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


# -- the sampler on its own ------------------------------------------------------


def test_a_sample_has_plausible_values_under_valid_names(tmp_path: Path) -> None:
    sampler = SystemSampler(tmp_path, gpu=False)
    assert sampler.start() == {}
    _busy(0.05)  # some CPU time of our own to measure
    ts, values = sampler.sample()
    sampler.close()
    assert abs(ts - time.time()) < 60
    assert all(is_valid(k) and k.startswith("system/") for k in values)
    ncpu = psutil.cpu_count()
    assert 0 < values["system/proc/cpu_percent"] <= 100
    assert 0 < values["system/proc/cpu_cores"] <= ncpu
    assert values["system/proc/rss_bytes"] > 10_000_000
    assert values["system/proc/threads"] >= 1
    assert values["system/proc/open_files"] >= 0
    assert "system/proc/processes" not in values
    assert 0 <= values["system/cpu/percent"] <= 100
    cores = [k for k in values if k.startswith("system/cpu/core_")]
    assert sorted(cores) == sorted(f"system/cpu/core_{i}" for i in range(ncpu))
    assert all(0 <= values[k] <= 100 for k in cores)
    vm = psutil.virtual_memory()
    assert 0 < values["system/memory/used_bytes"] <= vm.total
    assert 0 < values["system/memory/percent"] <= 100
    assert values["system/memory/available_bytes"] > 0
    assert values["system/swap/used_bytes"] >= 0
    assert 0 <= values["system/swap/percent"] <= 100
    assert 0 < values["system/disk/percent"] <= 100
    assert values["system/disk/free_bytes"] > 0
    for k in ("disk/read_bytes", "disk/write_bytes", "network/sent_bytes", "network/recv_bytes"):
        assert values[f"system/{k}"] >= 0
    assert not any(k.startswith("system/gpu") for k in values)
    for k, v in values.items():
        if k.endswith("_bytes"):
            assert type(v) is int, k


def test_disk_counters_follow_the_disk_of_the_run_directory(tmp_path: Path) -> None:
    disk = system.disk_of(tmp_path)
    if disk is None:
        pytest.skip("psutil cannot map this file system to a disk (counts every disk)")
    assert disk in psutil.disk_io_counters(perdisk=True)


def test_disk_and_network_count_from_the_start(tmp_path: Path) -> None:
    sampler = SystemSampler(tmp_path, gpu=False)
    sampler.start()
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.write(os.urandom(8 * 1024 * 1024))
        f.flush()
        os.fsync(f.fileno())
    _, values = sampler.sample()
    sampler.close()
    # Other processes write too, so only a lower bound holds; and a file system
    # psutil cannot map (overlay) counts every disk, which includes this one.
    assert values["system/disk/write_bytes"] >= 8 * 1024 * 1024


def test_the_process_tree_counts_children(tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    alone = SystemSampler(tmp_path, gpu=False)
    tree = SystemSampler(tmp_path, gpu=False, process_tree=True)
    alone.start()
    tree.start()
    _, one = alone.sample()
    _, many = tree.sample()
    assert many["system/proc/processes"] >= 2
    assert many["system/proc/rss_bytes"] > one["system/proc/rss_bytes"]
    assert many["system/proc/threads"] > one["system/proc/threads"]


def test_a_gpu_used_by_a_child_counts_only_with_the_process_tree(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    def sample(tree: bool) -> dict[str, Any]:
        lib = FakeNvml([FakeGpu(compute={child.pid: GiB})])
        sampler = SystemSampler(tmp_path, process_tree=tree, nvml=lib)
        sampler.start()
        _, values = sampler.sample()
        sampler.close()
        return values

    assert sample(tree=False)["system/gpu_0/in_use"] == 0
    with_tree = sample(tree=True)
    assert with_tree["system/gpu_0/in_use"] == 1
    assert with_tree["system/gpu_0/process_memory_bytes"] == GiB


def test_close_during_a_sample_shuts_nvml_down_when_the_sample_ends(tmp_path: Path) -> None:
    lib = FakeNvml()
    entered, release = threading.Event(), threading.Event()
    temperature = lib.nvmlDeviceGetTemperature

    def slow_temperature(handle: int, sensor: int) -> int:
        entered.set()
        release.wait(HANG)
        return temperature(handle, sensor)

    lib.nvmlDeviceGetTemperature = slow_temperature  # type: ignore[method-assign]
    sampler = SystemSampler(tmp_path, nvml=lib)
    sampler.start()
    worker = threading.Thread(target=sampler.sample)
    worker.start()
    assert entered.wait(HANG)
    sampler.close()  # returns at once: the sample in flight still uses NVML
    assert lib.initialised
    release.set()
    worker.join(HANG)
    assert not lib.initialised
    assert lib.calls["nvmlShutdown"] == 1


# -- the source on a memory stream ---------------------------------------------


def _info(tmp_path: Path) -> RunInfo:
    return RunInfo(id="r1", name="r1", project="p", dir=tmp_path, start_ts=time.time())


async def _collect(tmp_path: Path, stats: int, **kwargs: Any) -> list[ev.Item]:
    """Run the source until ``stats`` samples came, then cancel it as the bus does."""
    send, receive = anyio.create_memory_object_stream[list[ev.Item]](4)
    got: list[ev.Item] = []
    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(partial(run_sampler, send, run=_info(tmp_path), interval=0.1, **kwargs))
            async for batch in receive:
                got.extend(batch)
                if sum(1 for e in got if e.kind == "stats") >= stats:
                    break
            tg.cancel_scope.cancel()
    return got


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_source_sends_gpu_metadata_once_then_stats(
    tmp_path: Path, anyio_backend: str
) -> None:
    lib = FakeNvml([FakeGpu(compute={os.getpid(): GiB})])
    got = await _collect(tmp_path, 3, process_tree=False, gpu=True, nvml=lib)
    assert got[0].kind == "metadata"
    assert got[0].values["gpu"][0]["name"] == "NVIDIA Fake 80GB"  # type: ignore[union-attr]
    assert got[0].values["cuda_version"] == "12.4"  # type: ignore[union-attr]
    stats = [e for e in got if isinstance(e, ev.Stats)]
    assert [e.kind for e in got[1:]] == ["stats"] * len(stats)
    for s in stats:
        assert s.run_id == "r1"
        assert s.seq == 0  # the bus numbers it
        assert s.runtime >= 0
        assert s.values["system/gpu_0/power_watts"] == 200.0
        assert s.values["system/gpu_0/in_use"] == 1
    assert [s.ts for s in stats] == sorted(s.ts for s in stats)
    # Cancelled like the bus cancels its sources at finish: NVML is shut down.
    assert lib.calls["nvmlShutdown"] == 1
    assert not lib.initialised


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_no_gpu_means_no_metadata(tmp_path: Path, anyio_backend: str) -> None:
    got = await _collect(tmp_path, 1, process_tree=False, gpu=True, nvml=FakeNvml([]))
    assert [e.kind for e in got] == ["stats"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancelling_during_a_hung_nvml_call_is_prompt(
    tmp_path: Path, anyio_backend: str
) -> None:
    lib = FakeNvml()
    release = threading.Event()
    entered = anyio.Event()
    token = anyio.lowlevel.current_token()
    power = lib.nvmlDeviceGetPowerUsage
    calls = 0

    def hung_power(handle: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second sample hangs, as a GPU falling off the bus can
            anyio.from_thread.run_sync(entered.set, token=token)
            release.wait(HANG)
        return power(handle)

    lib.nvmlDeviceGetPowerUsage = hung_power  # type: ignore[method-assign]
    shut = threading.Event()
    shutdown = lib.nvmlShutdown

    def observed_shutdown() -> None:
        shutdown()
        shut.set()

    lib.nvmlShutdown = observed_shutdown  # type: ignore[method-assign]
    send, receive = anyio.create_memory_object_stream[list[ev.Item]](4)
    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(
                partial(
                    run_sampler,
                    send,
                    run=_info(tmp_path),
                    interval=0.1,
                    process_tree=False,
                    gpu=True,
                    nvml=lib,
                )
            )
            await entered.wait()
            started = time.monotonic()
            tg.cancel_scope.cancel()
    # Not a timing assertion on the sampler: the bound only tells "prompt" from
    # "waited for the hung call" (which would take HANG seconds).
    assert time.monotonic() - started < HANG / 2
    assert lib.initialised  # the hung sample still holds NVML...
    release.set()
    # ...and shuts it down when it ends.
    assert await anyio.to_thread.run_sync(shut.wait, HANG)
    assert lib.calls["nvmlShutdown"] == 1


# -- through a real run ------------------------------------------------------------


def _wait_for_samples(run: pipeline.Run, n: int = 2) -> RunData:
    """Log and flush until ``n`` system samples are on disk (bounded)."""
    deadline = time.monotonic() + HANG
    step = 0
    while True:
        run.log({"x": step})
        step += 1
        run.flush()
        data = pipeline.read_run(run.dir)
        if len(data.system) >= n:
            return data
        assert time.monotonic() < deadline, f"no system samples after {HANG} s"
        time.sleep(0.02)  # polls the condition above; not the synchronisation


def test_a_run_records_system_samples(tmp_path: Path, fake: FakeNvml) -> None:
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    _wait_for_samples(run, 2)
    run.finish()
    data = pipeline.read_run(run.dir)
    assert len(data.system) >= 2
    for sample in data.system:
        assert sample["_timestamp"] >= run.start_time
        assert sample["_runtime"] == pytest.approx(sample["_timestamp"] - run.start_time)
        assert sample["system/proc/rss_bytes"] > 0
        assert 0 <= sample["system/cpu/percent"] <= 100
        assert sample["system/gpu_0/temperature_c"] == 60
        assert sample["system/gpu_0/memory_used_bytes"] == 20 * GiB
        assert sample["system/gpu_0/power_percent"] == 50.0
        assert sample["system/gpu_0/in_use"] == 1
        assert sample["system/gpu_0/process_memory_bytes"] == 3 * GiB
    assert [s["_timestamp"] for s in data.system] == sorted(s["_timestamp"] for s in data.system)
    assert data.metadata["gpu"] == [
        {
            "index": 0,
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_bytes": 80 * GiB,
            "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        }
    ]
    assert data.metadata["gpu_driver"] == "550.54.15"
    assert data.metadata["cuda_version"] == "12.4"
    # System samples live on their own timeline, not in the history.
    assert not any(k.startswith("system/") for row in data.history for k in row)
    assert fake.calls["nvmlShutdown"] == 1


def test_system_off_records_no_samples(
    tmp_path: Path, fake: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr(system, "run_sampler", lambda *a, **k: started.append(a))
    run = pipeline.init(project="p", dir=tmp_path, settings={**SETTINGS, "system": False})
    for i in range(20):
        run.log({"x": i})
        run.flush()
    run.finish()
    assert started == []
    assert pipeline.read_run(run.dir).system == []
    assert "nvmlInit" not in fake.calls


def test_gpu_off_records_no_gpu_metrics(tmp_path: Path, fake: FakeNvml) -> None:
    run = pipeline.init(project="p", dir=tmp_path, settings={**SETTINGS, "gpu": False})
    data = _wait_for_samples(run, 2)
    run.finish()
    assert not any(k.startswith("system/gpu") for s in data.system for k in s)
    assert "gpu" not in pipeline.read_run(run.dir).metadata
    assert "nvmlInit" not in fake.calls


def test_nvml_failing_at_start_is_quiet(
    tmp_path: Path,
    fake: FakeNvml,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.fail["nvmlInit"] = FakeNvml.error(9, "Driver Not Loaded")
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    data = _wait_for_samples(run, 2)
    run.finish()
    assert data.system[0]["system/proc/rss_bytes"] > 0
    assert not any(k.startswith("system/gpu") for s in data.system for k in s)
    assert len(_debug(caplog, "GPU metrics off")) == 1
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if r.name == "runbus")
    assert capsys.readouterr() == ("", "")


def test_nvml_failing_mid_run_drops_the_gpu_part_quietly(
    tmp_path: Path,
    fake: FakeNvml,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    before = _wait_for_samples(run, 1)
    assert "system/gpu_0/utilization_percent" in before.system[-1]
    fake.fail["nvmlDeviceGetUtilizationRates"] = FakeNvml.error(15, "GPU is lost")
    seen = len(before.system)
    data = _wait_for_samples(run, seen + 2)
    run.finish()
    assert "system/gpu_0/utilization_percent" not in data.system[-1]
    assert data.system[-1]["system/proc/rss_bytes"] > 0
    assert len(_debug(caplog, "GPU metrics off")) == 1
    assert fake.calls["nvmlShutdown"] == 1
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if r.name == "runbus")
    assert capsys.readouterr() == ("", "")


def test_a_run_on_a_machine_without_nvidia_prints_nothing(tmp_path: Path) -> None:
    """The real pynvml (or none) in a fresh process, with default logging: no output."""
    code = textwrap.dedent(
        """
        import sys, time, pipeline
        run = pipeline.init(project="p", dir=sys.argv[1], settings={
            "system_interval": 0.1, "console": "off", "quiet": True})
        deadline = time.monotonic() + 30
        while not pipeline.read_run(run.dir).system and time.monotonic() < deadline:
            run.log({"x": 1})
            run.flush()
            time.sleep(0.02)
        run.finish()
        print(len(pipeline.read_run(run.dir).system))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert int(done.stdout) >= 1
