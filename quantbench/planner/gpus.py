"""A catalog of GPUs and their memory in bytes.

Unit rule: a card sold as "N GB" is counted as N GiB = N × 2**30 bytes. GPU memory is built from
power-of-two DRAM/HBM dies, and what drivers report matches the binary reading: an RTX 4090
"24 GB" shows 24564 MiB in nvidia-smi, an A100 "80 GB" 81920 MiB. Counting "24 GB" as 24 × 10**9
bytes would understate the card by 7% (the GB-vs-GiB error NyxKrage's VRAM calculator had to fix).
The one marketed figure that is not a whole number of GiB is H200's "141 GB"; nvidia-smi reports
about 140.4 GiB, and the catalog keeps 141 GiB like its label, within 0.5%.

The driver keeps a few hundred MiB of each card for itself (24564 MiB of 24576 on a 4090), and the
CUDA context needs more; both belong to the estimate's runtime term, not to this catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantbench.errors import QuantbenchError

GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: int
    kind: str  # consumer | workstation | datacenter

    @property
    def memory_bytes(self) -> int:
        return self.memory_gib * GIB


CATALOG: tuple[Gpu, ...] = (
    Gpu("RTX 3060", 12, "consumer"),
    Gpu("RTX 3080", 10, "consumer"),
    Gpu("RTX 3090", 24, "consumer"),
    Gpu("RTX 4060", 8, "consumer"),
    Gpu("RTX 4060 Ti 16GB", 16, "consumer"),
    Gpu("RTX 4070", 12, "consumer"),
    Gpu("RTX 4070 Ti Super", 16, "consumer"),
    Gpu("RTX 4080", 16, "consumer"),
    Gpu("RTX 4090", 24, "consumer"),
    Gpu("RTX 5070", 12, "consumer"),
    Gpu("RTX 5080", 16, "consumer"),
    Gpu("RTX 5090", 32, "consumer"),
    Gpu("RX 7900 XTX", 24, "consumer"),
    Gpu("T4", 16, "datacenter"),
    Gpu("A10", 24, "datacenter"),
    Gpu("L4", 24, "datacenter"),
    Gpu("RTX A6000", 48, "workstation"),
    Gpu("RTX 6000 Ada", 48, "workstation"),
    Gpu("L40S", 48, "datacenter"),
    Gpu("V100 32GB", 32, "datacenter"),
    Gpu("A100 40GB", 40, "datacenter"),
    Gpu("A100 80GB", 80, "datacenter"),
    Gpu("H100 80GB", 80, "datacenter"),
    Gpu("H100 NVL", 94, "datacenter"),
    Gpu("H200", 141, "datacenter"),
    Gpu("MI300X", 192, "datacenter"),
    Gpu("B200", 180, "datacenter"),  # HGX/DGX B200 expose 180 GB per GPU (of 192 GB of HBM)
)


def _key(name: str) -> str:
    # "rtx-4090", "RTX4090" and "NVIDIA GeForce RTX 4090" all name the same card.
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    for prefix in ("nvidia", "geforce", "amd", "radeon"):
        key = key.removeprefix(prefix)
    return key


def find_gpu(name: str) -> Gpu:
    """Look a GPU up by name, ignoring case, spaces, dashes and vendor prefixes."""
    wanted = _key(name)
    for gpu in CATALOG:
        if _key(gpu.name) == wanted:
            return gpu
    raise QuantbenchError(f"unknown GPU {name!r}; known GPUs: {', '.join(g.name for g in CATALOG)}")
