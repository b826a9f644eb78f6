"""PeakMemory: the peak RSS of a block (the kernel's high-water mark, or the sampler where that mark
cannot be reset), blocks inside blocks, how much of the peak was mapped from files and how much of
that from code files (shared libraries); on CUDA torch's allocator peaks."""

import mmap
import sys
import time

import pytest
import torch

from quantbench.trackers.memory import (
    KERNEL_MARK,
    SAMPLED,
    PeakMemory,
    code_file_rss,
    kernel_mark_resettable,
    reset_rss_high_water_mark,
    rss_high_water_mark,
)

MIB = 2**20

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the marks and file shares are read from /proc")


def _touch(mib: int) -> mmap.mmap:
    """`mib` MiB of private pages, all written so they are resident; closing unmaps them, which
    returns them to the kernel at once (a freed tensor may stay in the C heap)."""
    block = mmap.mmap(-1, mib * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for offset in range(0, mib * MIB, mmap.PAGESIZE):
        block[offset] = 1
    return block


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_this_machine_resets_the_kernel_mark_and_it_tracks_a_new_allocation():
    """Documentation/filesystems/proc.rst: writing 5 to clear_refs resets VmHWM to the current RSS."""
    assert kernel_mark_resettable()
    block = _touch(128)
    block.close()
    reset_rss_high_water_mark()
    after_reset = rss_high_water_mark()
    assert after_reset - _rss() < 8 * MIB  # the freed 128 MiB are no longer the mark
    block = _touch(64)
    assert rss_high_water_mark() - after_reset > 56 * MIB
    block.close()
    assert rss_high_water_mark() - after_reset > 56 * MIB  # freeing does not lower the mark


def test_the_kernel_mark_catches_a_spike_no_sampler_could():
    with PeakMemory() as outside:
        pass
    with PeakMemory() as memory:
        block = _touch(64)
        block.close()  # gone within milliseconds: shorter than the sampling interval
    assert memory.peak.rss_source == KERNEL_MARK
    assert memory.peak.rss_bytes - outside.peak.rss_bytes > 56 * MIB
    assert abs(memory.peak.rss_file_bytes - outside.peak.rss_file_bytes) < 16 * MIB


def test_the_sampler_sees_a_block_held_for_several_intervals():
    with PeakMemory(kernel_mark=False) as outside:
        pass
    with PeakMemory(kernel_mark=False) as memory:
        block = _touch(64)
        # in a long test process ru_maxrss is already above this block, so only a sample taken
        # while it lives can see it (a shorter spike is missed: why the kernel mark is preferred)
        time.sleep(20 * memory.interval_s)
        block.close()
    assert memory.peak.rss_source == SAMPLED
    assert memory.peak.rss_bytes - outside.peak.rss_bytes > 56 * MIB
    assert abs(memory.peak.rss_file_bytes - outside.peak.rss_file_bytes) < 16 * MIB


def test_an_inner_block_keeps_the_outer_peak_and_measures_only_its_own():
    """The kernel mark is per process: the inner block resets it, yet the outer block still sees the
    spike before the inner one began, and the inner block does not see it."""
    with PeakMemory() as outer:
        before = _rss()
        block = _touch(96)
        block.close()
        with PeakMemory() as inner:
            small = _touch(16)
            small.close()
    assert 12 * MIB < inner.peak.rss_bytes - before < 40 * MIB  # its own 16 MiB, not the 96 MiB before it
    assert outer.peak.rss_bytes - before > 88 * MIB


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_allocator_peaks_of_nested_blocks():
    with PeakMemory() as outer:
        spike = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
        del spike
        with PeakMemory() as inner:
            small = torch.empty(16 * MIB, dtype=torch.uint8, device="cuda")
            small.close()
    assert 16 * MIB <= inner.peak.cuda_allocated_bytes < 64 * MIB
    assert outer.peak.cuda_allocated_bytes >= 64 * MIB
    assert outer.peak.cuda_reserved_bytes >= outer.peak.cuda_allocated_bytes
