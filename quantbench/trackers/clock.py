"""Time on the timeline where the work runs: `perf_counter` on CPU, where a call returns when its
work is done; on CUDA, events recorded on the stream (kernels run asynchronously, so host time
would measure their launches), read after a synchronize. Seconds throughout."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Clock:
    cuda: bool = False

    def mark(self) -> float | torch.cuda.Event:
        """A timestamp; on CUDA an event recorded on the current stream, which adds no host synchronisation."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
        """Seconds from mark `start` to mark `end`; on CUDA this waits for the device to reach `end`."""
        if not self.cuda:
            return end - start
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3


def clock_for(device: str) -> Clock:
    return Clock(cuda=str(device).startswith("cuda"))


def time_call(fn: Callable[[], object], clock: Clock) -> float:
    """Seconds one call of `fn` took on `clock`'s timeline."""
    start = clock.mark()
    fn()
    return clock.seconds(start, clock.mark())
