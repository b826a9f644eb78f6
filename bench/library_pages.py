"""How much of a worker's RSS is shared-library code, and how that depends on the page cache.

A child interpreter imports torch and transformers, runs a tiny model once and sums the resident
pages of every mapped code file (trackers/memory.py: code_file_rss). Run three times: as the files sit in the
page cache now; after the big libraries were evicted from it (posix_fadvise DONTNEED), so their
pages come in through the mapping's own faults; and after they were evicted and read back with
read(), the way pip install, cp or a checksum fills the cache. The three differ by how the kernel
cached the files (ext4 large folios map whole on a fault), which this script cannot fully set:
the spread, not one figure, is the result.

    .venv/bin/python bench/library_pages.py
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

MIB = 2**20
# The shared objects that dominate a worker's code pages (torch's CPU kernels, triton's compiler).
LIBRARIES = ("torch/lib/libtorch_cpu.so", "triton/_C/libtriton.so", "torch/lib/libtorch_python.so")


def child() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantbench.trackers.memory import code_file_rss

    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    LlamaForCausalLM(config)(torch.tensor([[1, 2, 3]]))
    per_file = collections.Counter({Path(path).name: size for path, size in code_file_rss().items()})
    code = {"all": sum(per_file.values()), **dict(per_file.most_common(3))}
    print(json.dumps({k: round(v / MIB, 1) for k, v in code.items()}))


def measure() -> dict:
    done = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def evict(site_packages: Path, read_back: bool) -> None:
    """Evict the libraries' pages from the page cache, and optionally read them back through read()."""
    for relative in LIBRARIES:
        path = site_packages / relative
        if not path.exists():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while read_back and os.read(fd, 1 << 20):
                pass
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    if parser.parse_args().child:
        child()
        return
    import torch

    site_packages = Path(torch.__file__).parents[1]
    as_cached = measure()  # the state this venv's history left: a fresh pip install differs from an old one
    evict(site_packages, read_back=False)
    before = measure()
    evict(site_packages, read_back=True)
    after = measure()
    print(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "torch": torch.__version__,
                "as_cached_mib": as_cached,
                "faulted_in_mib": before,
                "after_read_mib": after,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
