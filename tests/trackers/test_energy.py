"""Energy: a counter where the device has one, otherwise the reason, never a made-up 0."""

import time
from pathlib import Path

import pytest
import torch

from quantbench.trackers.energy import RAPL_ROOT, EnergyMeter, NoEnergyMeter, energy_meter, rapl_meter


def _busy(seconds: float) -> None:
    a = torch.ones(256, 256)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a


def test_cpu_energy_is_measured_where_rapl_is_readable_and_otherwise_says_why():
    """On this CI machine (a VM without /sys/class/powercap) the reason is reported; on a Linux host
    that lets this user read RAPL, the counter rises over busy work."""
    meter = energy_meter("cpu")
    packages = list(RAPL_ROOT.glob("intel-rapl:*"))
    if isinstance(meter, NoEnergyMeter):
        if not packages:
            assert meter.reason == f"no RAPL package counter under {RAPL_ROOT}"
        else:
            assert "not readable" in meter.reason and "energy_uj" in meter.reason
        return
    assert isinstance(meter, EnergyMeter) and meter.source.startswith("RAPL")
    before = meter.joules()
    _busy(0.2)
    assert meter.joules() > before


def test_rapl_counters_are_summed_over_packages_across_a_wrap(tmp_path: Path):
    """Files in the layout of /sys/class/powercap (a directory written by the test, standing in for
    sysfs): packages are summed, their sub-zones are not, and a wrapped counter still adds up."""
    for zone, value in (("intel-rapl:0", 900), ("intel-rapl:1", 100), ("intel-rapl:0:0", 5)):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "energy_uj").write_text(f"{value}\n")
        (tmp_path / zone / "max_energy_range_uj").write_text("1000\n")
    meter = rapl_meter(tmp_path)
    assert isinstance(meter, EnergyMeter) and meter.source == "RAPL, whole CPU packages intel-rapl:0, intel-rapl:1"
    assert meter.joules() == 0
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("50\n")  # wrapped at 1000: 150 µJ later
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("400\n")
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("999\n")  # a sub-zone: ignored
    assert meter.joules() == pytest.approx((150 + 300) / 1e6)


def test_unreadable_rapl_says_which_file(tmp_path: Path):
    (tmp_path / "intel-rapl:0").mkdir()
    (tmp_path / "intel-rapl:0" / "max_energy_range_uj").write_text("1000\n")
    meter = rapl_meter(tmp_path)  # no energy_uj: what a read refused by permissions also raises (OSError)
    assert isinstance(meter, NoEnergyMeter)
    assert meter.reason.startswith("RAPL energy counters are not readable here") and "energy_uj" in meter.reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report where there is no GPU")
def test_cuda_energy_without_a_gpu_says_why():
    meter = energy_meter("cuda")
    assert isinstance(meter, NoEnergyMeter) and "CUDA is not available" in meter.reason


def test_other_devices_have_no_counter():
    assert energy_meter("mps") == NoEnergyMeter("no energy counter for device 'mps'")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvml_counter_rises_over_gpu_work():
    meter = energy_meter("cuda")
    if isinstance(meter, NoEnergyMeter):
        pytest.skip(meter.reason)  # nvidia-ml-py not installed, or a GPU without an energy counter
    before = meter.joules()
    torch.cuda._sleep(200_000_000)
    torch.cuda.synchronize()
    assert meter.joules() > before
