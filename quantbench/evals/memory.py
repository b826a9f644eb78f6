"""Peak memory of a block of code: process RSS sampled in a background thread, and on CUDA
the allocator's own peaks. Bytes throughout; convert only for display."""

from __future__ import annotations

import resource
import threading
from dataclasses import dataclass

import psutil
import torch


@dataclass
class MemoryPeak:
    rss_bytes: int = 0
    cuda_allocated_bytes: int = 0
    cuda_reserved_bytes: int = 0


class PeakMemory:
    """Context manager recording the peak RSS seen while it is open.

    Sampling can miss a spike shorter than the interval, so the sample is raised to the
    kernel's own high-water mark (ru_maxrss) when that mark was set inside the block.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = MemoryPeak()
        self._stop = threading.Event()
        self._process = psutil.Process()

    def __enter__(self) -> PeakMemory:
        self._maxrss_before = _maxrss_bytes()
        self.peak.rss_bytes = self._process.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        maxrss = _maxrss_bytes()
        if maxrss > self._maxrss_before:
            self.peak.rss_bytes = max(self.peak.rss_bytes, maxrss)
        if torch.cuda.is_available():
            self.peak.cuda_allocated_bytes = torch.cuda.max_memory_allocated()
            self.peak.cuda_reserved_bytes = torch.cuda.max_memory_reserved()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak.rss_bytes = max(self.peak.rss_bytes, self._process.memory_info().rss)


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
