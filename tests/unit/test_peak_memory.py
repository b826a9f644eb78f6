"""PeakMemory: the peak RSS of a block, how much of it was mapped from files, and how much of that
from code files (shared libraries)."""

import mmap
import sys
import time

import pytest
import torch

from quantbench.evals.memory import PeakMemory, code_file_rss

MIB = 2**20

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the file-backed share is read from /proc")


def test_private_allocation_raises_the_peak_not_the_file_share():
    with PeakMemory() as outside:
        pass
    with PeakMemory() as memory:
        block = torch.ones(64 * MIB // 4)  # 64 MiB of private pages, written so they are resident
        # Held for several sampling intervals: in a long test process ru_maxrss is already above
        # this block, so only a sample taken while it lives can see it (a shorter spike is missed,
        # as PeakMemory's docstring says).
        time.sleep(20 * memory.interval_s)
        del block
    assert memory.peak.rss_bytes - outside.peak.rss_bytes > 56 * MIB
    assert abs(memory.peak.rss_file_bytes - outside.peak.rss_file_bytes) < 16 * MIB


def test_pages_read_through_a_file_mapping_count_as_file_backed(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * (64 * MIB))
    with PeakMemory() as outside:
        pass
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, PeakMemory() as memory:
        assert sum(mapped[i] for i in range(0, len(mapped), mmap.PAGESIZE)) == 64 * MIB // mmap.PAGESIZE
        code = code_file_rss()
    assert memory.peak.rss_file_bytes - outside.peak.rss_file_bytes > 56 * MIB
    assert memory.peak.rss_file_bytes <= memory.peak.rss_bytes
    # a data file is file-backed but not code: it raises the file share, not the code share
    assert str(path) not in code
    assert abs(memory.peak.rss_code_bytes - outside.peak.rss_code_bytes) < 16 * MIB


def test_code_pages_are_the_libraries_mapped_executable():
    code = code_file_rss()
    libtorch = [path for path in code if path.endswith("/libtorch_cpu.so")]
    assert libtorch and code[libtorch[0]] > 0  # torch's kernels are resident once a tensor was made
    assert all(b >= 0 for b in code.values())
    with PeakMemory() as memory:
        pass
    assert 0 < memory.peak.rss_code_bytes <= memory.peak.rss_bytes
