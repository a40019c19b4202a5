"""The NVML wrapper against a fake NVML: exact values, and quiet failure of every kind."""

from __future__ import annotations

import logging
import sys

import pytest

from pipeline.names import is_valid
from sources import nvml
from sources.nvml import FakeGpu, FakeNvml, Gpus, cuda_version_text

GiB = 1024**3


def _debug(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "runbus" and text in r.getMessage()]


def _no_noise(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if r.name == "runbus")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="runbus")


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(
                name="NVIDIA H100 80GB HBM3",
                uuid="GPU-aaaa",
                memory_total=80 * GiB,
                memory_used=20 * GiB,
                utilization=97,
                memory_utilization=41,
                temperature=71,
                power_mw=612_345,
                power_limit_mw=700_000,
                sm_clock=1980,
                memory_clock=2619,
                compute={111: 3 * GiB, 222: 1 * GiB, 999: 5 * GiB},
                graphics={111: 3 * GiB},  # a process may be in both lists
            ),
            FakeGpu(name="NVIDIA H100 80GB HBM3", uuid="GPU-bbbb", compute={999: GiB}),
        ],
        driver="550.54.15",
        cuda=12040,
    )


def test_metadata_lists_every_gpu_with_driver_and_cuda() -> None:
    gpus = Gpus.open(two_gpus())
    assert gpus is not None
    assert gpus.metadata() == {
        "gpu": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total_bytes": 80 * GiB,
                "uuid": "GPU-aaaa",
            },
            {
                "index": 1,
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total_bytes": 80 * GiB,
                "uuid": "GPU-bbbb",
            },
        ],
        "gpu_count": 2,
        "gpu_driver": "550.54.15",
        "cuda_version": "12.4",
    }
    gpus.close()


def test_sample_gives_exact_values_and_which_gpus_this_run_uses() -> None:
    gpus = Gpus.open(two_gpus())
    assert gpus is not None
    values = gpus.sample({111, 222})
    assert values == {
        "system/gpu_0/utilization_percent": 97,
        "system/gpu_0/memory_busy_percent": 41,
        "system/gpu_0/memory_used_bytes": 20 * GiB,
        "system/gpu_0/memory_total_bytes": 80 * GiB,
        "system/gpu_0/memory_percent": 25.0,
        "system/gpu_0/temperature_c": 71,
        "system/gpu_0/power_watts": 612.345,
        "system/gpu_0/power_limit_watts": 700.0,
        "system/gpu_0/power_percent": 87.48,
        "system/gpu_0/sm_clock_mhz": 1980,
        "system/gpu_0/memory_clock_mhz": 2619,
        "system/gpu_0/in_use": 1,
        # pid 111 counted once although NVML lists it twice; 999 is not ours.
        "system/gpu_0/process_memory_bytes": 4 * GiB,
        "system/gpu_1/utilization_percent": 50,
        "system/gpu_1/memory_busy_percent": 25,
        "system/gpu_1/memory_used_bytes": 20 * GiB,
        "system/gpu_1/memory_total_bytes": 80 * GiB,
        "system/gpu_1/memory_percent": 25.0,
        "system/gpu_1/temperature_c": 60,
        "system/gpu_1/power_watts": 200.0,
        "system/gpu_1/power_limit_watts": 400.0,
        "system/gpu_1/power_percent": 50.0,
        "system/gpu_1/sm_clock_mhz": 1500,
        "system/gpu_1/memory_clock_mhz": 2600,
        "system/gpu_1/in_use": 0,
    }
    assert all(is_valid(k) for k in values)
    gpus.close()


def test_process_memory_the_driver_hides_counts_as_in_use_with_zero_bytes() -> None:
    fake = FakeNvml([FakeGpu(compute={5: None}, graphics={6: 2**64 - 1})])
    gpus = Gpus.open(fake)
    assert gpus is not None
    values = gpus.sample({5, 6})
    assert values["system/gpu_0/in_use"] == 1
    assert values["system/gpu_0/process_memory_bytes"] == 0
    gpus.close()


def test_close_shuts_nvml_down_once() -> None:
    fake = two_gpus()
    gpus = Gpus.open(fake)
    assert gpus is not None
    gpus.close()
    gpus.close()
    assert fake.calls["nvmlShutdown"] == 1
    assert not fake.initialised
    assert gpus.sample({1}) == {}
    assert gpus.metadata() == {}


def test_nvml_failing_at_init_is_one_debug_message(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeNvml()
    fake.fail["nvmlInit"] = FakeNvml.error(12, "NVML Shared Library Not Found")
    assert Gpus.open(fake) is None
    found = _debug(caplog, "GPU metrics off")
    assert len(found) == 1
    assert "NVML Shared Library Not Found" in found[0].getMessage()
    assert found[0].levelno == logging.DEBUG
    _no_noise(caplog, capsys)


def test_no_gpu_is_one_debug_message_and_nvml_is_shut_down(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeNvml([])
    assert Gpus.open(fake) is None
    assert len(_debug(caplog, "found no NVIDIA GPU")) == 1
    assert fake.calls["nvmlShutdown"] == 1
    _no_noise(caplog, capsys)


def test_listing_gpus_failing_is_quiet_and_shuts_down(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeNvml()
    fake.fail["nvmlDeviceGetHandleByIndex"] = FakeNvml.error(15, "GPU is lost")
    assert Gpus.open(fake) is None
    assert len(_debug(caplog, "GPU metrics off")) == 1
    assert fake.calls["nvmlShutdown"] == 1
    _no_noise(caplog, capsys)


@pytest.mark.parametrize(
    "exc", [FakeNvml.error(15, "GPU is lost"), RuntimeError("not even an NVML error")]
)
def test_an_error_mid_run_stops_the_gpu_part_with_one_message(
    exc: BaseException, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = two_gpus()
    gpus = Gpus.open(fake)
    assert gpus is not None
    assert gpus.sample({1})
    fake.fail["nvmlDeviceGetTemperature"] = exc
    assert gpus.sample({1}) == {}
    assert gpus.count == 0
    asked = dict(fake.calls)
    assert gpus.sample({1}) == {}
    assert fake.calls == asked  # a stopped session asks NVML nothing more
    assert fake.calls["nvmlShutdown"] == 1
    assert len(_debug(caplog, "GPU metrics off")) == 1
    _no_noise(caplog, capsys)


@pytest.mark.parametrize("code", [3, 4, 13])  # not supported, no permission, function not found
def test_an_unsupported_value_is_left_out_and_asked_for_once(
    code: int, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeNvml([FakeGpu()])
    fake.fail["nvmlDeviceGetPowerUsage"] = FakeNvml.error(code)
    gpus = Gpus.open(fake)
    assert gpus is not None
    first = gpus.sample(set())
    second = gpus.sample(set())
    assert first == second
    assert "system/gpu_0/power_watts" not in first
    assert "system/gpu_0/power_percent" not in first
    assert first["system/gpu_0/temperature_c"] == 60
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1
    assert len(_debug(caplog, "does not report power")) == 1
    gpus.close()
    _no_noise(caplog, capsys)


def test_no_process_lists_means_no_in_use_value() -> None:
    fake = FakeNvml([FakeGpu()])
    fake.fail["nvmlDeviceGetComputeRunningProcesses"] = FakeNvml.error(3)
    fake.fail["nvmlDeviceGetGraphicsRunningProcesses"] = FakeNvml.error(3)
    gpus = Gpus.open(fake)
    assert gpus is not None
    assert "system/gpu_0/in_use" not in gpus.sample({1})
    gpus.close()


def test_old_pynvml_bytes_are_decoded() -> None:
    class BytesNvml(FakeNvml):
        def nvmlDeviceGetName(self, handle: int) -> bytes:  # type: ignore[override]
            return b"Tesla V100"

        def nvmlSystemGetDriverVersion(self) -> bytes:  # type: ignore[override]
            return b"470.1"

    gpus = Gpus.open(BytesNvml())
    assert gpus is not None
    meta = gpus.metadata()
    assert meta["gpu"][0]["name"] == "Tesla V100"
    assert meta["gpu_driver"] == "470.1"
    gpus.close()


def test_no_pynvml_module_is_one_debug_message(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes ``import pynvml`` fail
    assert nvml.load_library() is None
    assert Gpus.open() is None
    assert len(_debug(caplog, "pynvml module is not installed")) == 1
    _no_noise(caplog, capsys)


def test_the_real_pynvml_without_a_driver_is_quiet(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pynvml")
    gpus = Gpus.open()
    if gpus is not None:
        gpus.close()
        pytest.skip("this machine has an NVIDIA GPU and driver")
    assert len(_debug(caplog, "GPU metrics off")) == 1
    _no_noise(caplog, capsys)


def test_cuda_version_text() -> None:
    assert cuda_version_text(12040) == "12.4"
    assert cuda_version_text(11080) == "11.8"
    assert cuda_version_text(13000) == "13.0"
