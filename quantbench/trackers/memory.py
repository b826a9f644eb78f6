"""Memory peaks of a block of code: the process's RSS, how much of it was mapped from files and from
code files, and on CUDA torch's allocator peaks. Bytes throughout; convert only for display.

Where Linux allows it the RSS peak is the kernel's own high-water mark, not a sample: `VmHWM` in
/proc/self/status, which writing "5" to /proc/self/clear_refs resets to the current RSS
(Documentation/filesystems/proc.rst). Nothing runs inside the measured process while it works,
and no spike is missed however short. Where that mark cannot be reset (no /proc, as on macOS, or a
sandbox that refuses the write) a thread samples RSS every `interval_s` instead, raised to
ru_maxrss when that never-reset mark rose inside the block; `MemoryPeak.rss_source` says which.

Both the kernel's mark and torch's CUDA peaks belong to the whole process, so a block opened inside
another (latency's measured calls inside the runner's eval) resets the marks the outer block is
reading. On entering, a tracker therefore first folds the marks so far into every open tracker.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import threading
from dataclasses import dataclass
from functools import cache

import psutil
import torch

KERNEL_MARK = "kernel high-water mark (VmHWM)"
SAMPLED = "sampled"


@dataclass
class MemoryPeak:
    rss_bytes: int = 0
    # Of rss_bytes, the pages mapped from files (library code, mmapped weights): shared with other
    # processes and dropped by the kernel under pressure, unlike the private rest. Read when the
    # block begins and ends, the larger kept: a block adds file pages (reading weights, loading
    # libraries) and rarely drops them, so this is their count at the peak unless the block unmaps
    # a file or the kernel reclaims its pages.
    rss_file_bytes: int = 0
    # Of rss_file_bytes, the pages of code files (shared libraries, the interpreter), read when the
    # block ends. How many pages a library keeps resident depends on how its file entered the page
    # cache, not on the model: docs/planner.md, "Why the test leaves code pages out".
    rss_code_bytes: int = 0
    cuda_allocated_bytes: int = 0
    cuda_reserved_bytes: int = 0
    rss_source: str = ""  # KERNEL_MARK or SAMPLED: what measured rss_bytes


# Trackers open in this process, outermost first: the marks they read are per process (see module doc).
_open: list[PeakMemory] = []


class PeakMemory:
    """Context manager recording the memory peaks of its block in `peak` (a MemoryPeak).

    `kernel_mark`: None uses the kernel's high-water mark where it can be reset, False samples.
    """

    def __init__(self, interval_s: float = 0.005, kernel_mark: bool | None = None) -> None:
        self.interval_s = interval_s
        self.kernel_mark = kernel_mark_resettable() if kernel_mark is None else kernel_mark
        self.peak = MemoryPeak(rss_source=KERNEL_MARK if self.kernel_mark else SAMPLED)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        for outer in _open:
            outer._take_marks()
        self.peak.rss_bytes, self.peak.rss_file_bytes = _rss_and_file_bytes()
        if self.kernel_mark:
            reset_rss_high_water_mark()
        else:
            self._maxrss_before = _maxrss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _open.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _open.remove(self)
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            maxrss = _maxrss_bytes()
            if maxrss > self._maxrss_before:
                self.peak.rss_bytes = max(self.peak.rss_bytes, maxrss)
        rss, file = _rss_and_file_bytes()  # a block shorter than one sampling interval still gets a sample
        self.peak.rss_bytes = max(self.peak.rss_bytes, rss)
        self.peak.rss_file_bytes = max(self.peak.rss_file_bytes, file)
        self._take_marks()
        self.peak.rss_code_bytes = sum(code_file_rss().values())

    def _take_marks(self) -> None:
        """Fold the process's marks since the last reset into this block's peak."""
        if self.kernel_mark:
            self.peak.rss_bytes = max(self.peak.rss_bytes, rss_high_water_mark())
        if torch.cuda.is_available():
            self.peak.cuda_allocated_bytes = max(self.peak.cuda_allocated_bytes, torch.cuda.max_memory_allocated())
            self.peak.cuda_reserved_bytes = max(self.peak.cuda_reserved_bytes, torch.cuda.max_memory_reserved())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak.rss_bytes = max(self.peak.rss_bytes, _rss_and_file_bytes()[0])


def rss_high_water_mark() -> int:
    """The kernel's peak RSS of this process since it started or since the last reset (VmHWM)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmHWM line")


def reset_rss_high_water_mark() -> None:
    """Set the kernel's peak RSS of this process to its current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


@cache
def kernel_mark_resettable() -> bool:
    """Whether this process can reset and read its kernel high-water mark (checked once, by doing it)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return False
    try:
        reset_rss_high_water_mark()
        rss_high_water_mark()
    except OSError:
        return False
    return True


def release_freed_heap() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc `malloc_trim`).

    glibc keeps freed blocks below its mmap threshold resident, so without this a block measured
    after another (an eval after quantizing) would carry the first one's freed temporaries in its
    RSS: RTN's quantization left ~600 MiB behind on SmolLM2-135M. No-op without glibc.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def _rss_and_file_bytes() -> tuple[int, int]:
    """Resident bytes of this process and the file-backed part of them (Linux /proc/self/status;
    elsewhere psutil's RSS and 0)."""
    try:
        with open("/proc/self/status", "rb") as f:
            lines = [line.split(b":", 1) for line in f if line.startswith((b"VmRSS:", b"RssFile:"))]
    except OSError:
        return psutil.Process().memory_info().rss, 0
    kib = {name: int(value.split()[0]) for name, value in lines}
    return kib[b"VmRSS"] * 1024, kib[b"RssFile"] * 1024


def code_file_rss() -> dict[str, int]:
    """Resident file-backed bytes per code file mapped into this process: every file with an
    executable mapping (shared libraries, the interpreter), all its mappings counted, less their
    copy-on-write pages, which are private memory. Empty where /proc/self/smaps does not exist."""
    rss: dict[str, int] = {}
    code: set[str] = set()
    path = ""
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if not fields[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
                    path = fields[5].rstrip("\n") if len(fields) == 6 and fields[5].startswith("/") else ""
                    if path and "x" in fields[1]:
                        code.add(path)
                elif path and fields[0] in ("Rss:", "Anonymous:"):
                    sign = 1 if fields[0] == "Rss:" else -1
                    rss[path] = rss.get(path, 0) + sign * int(fields[1]) * 1024
    except OSError:
        return {}
    return {p: b for p, b in rss.items() if p in code}


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB
