"""Energy counters in joules, or the reason there is none (never a made-up 0).

- CUDA: NVML's total energy of the GPU the device names (`pynvml`, from the nvidia-ml-py
  distribution; Volta or newer). It covers the whole GPU, other processes on it included.
- CPU: Linux RAPL's package counters, /sys/class/powercap/intel-rapl:<n>/energy_uj (AMD CPUs
  appear there too), summed over packages. They cover the whole packages (cores and uncore, not
  DRAM), other processes included. Since 2020 kernels let only root read them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RAPL_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyMeter:
    source: str  # what the joules cover
    joules: Callable[[], float]  # a counter: only differences between two reads mean something


@dataclass(frozen=True)
class NoEnergyMeter:
    reason: str  # why nothing here can measure energy, in one line


def energy_meter(device: str) -> EnergyMeter | NoEnergyMeter:
    """The energy counter for work on `device` ("cpu", "cuda", "cuda:1")."""
    device = str(device)
    if device.startswith("cuda"):
        return nvml_meter(device)
    if device == "cpu":
        return rapl_meter()
    return NoEnergyMeter(f"no energy counter for device {device!r}")


def nvml_meter(device: str) -> EnergyMeter | NoEnergyMeter:
    if not torch.cuda.is_available():
        return NoEnergyMeter("CUDA is not available, so there is no GPU to read NVML's energy counter of")
    try:
        import pynvml
    except ImportError:
        return NoEnergyMeter("pynvml is not installed (pip install nvidia-ml-py)")
    # NVML numbers GPUs by PCI bus, torch by CUDA_VISIBLE_DEVICES order: match them by bus id.
    props = torch.cuda.get_device_properties(torch.device(device))
    bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError as exc:  # no driver access, or a pre-Volta GPU without an energy counter
        return NoEnergyMeter(f"NVML cannot read the energy of GPU {bus_id}: {exc}")
    return EnergyMeter(
        f"NVML, whole GPU {bus_id}", lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3
    )  # NVML counts millijoules


def rapl_meter(root: Path = RAPL_ROOT) -> EnergyMeter | NoEnergyMeter:
    # Packages only: their sub-zones (intel-rapl:0:0 cores, ...) are parts of them or, for DRAM, not comparable.
    packages = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not packages:
        return NoEnergyMeter(f"no RAPL package counter under {root}")
    try:
        counter = _RaplCounter(packages)
    except OSError as exc:
        return NoEnergyMeter(f"RAPL energy counters are not readable here ({exc.strerror}: {exc.filename})")
    return EnergyMeter(f"RAPL, whole CPU packages {', '.join(p.name for p in packages)}", counter)


class _RaplCounter:
    """Joules summed over packages since creation; each package's microjoule counter wraps to 0
    at its max_energy_range_uj (minutes to hours at full power), so reads must come more often."""

    def __init__(self, packages: list[Path]) -> None:
        self.files = [p / "energy_uj" for p in packages]
        self.ranges = [int((p / "max_energy_range_uj").read_text()) for p in packages]
        self.last = [int(f.read_text()) for f in self.files]
        self.total_uj = 0

    def __call__(self) -> float:
        for i, (file, wrap) in enumerate(zip(self.files, self.ranges, strict=True)):
            now = int(file.read_text())
            self.total_uj += now - self.last[i] if now >= self.last[i] else now + wrap - self.last[i]
            self.last[i] = now
        return self.total_uj / 1e6
