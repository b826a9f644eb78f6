"""The clock against known sleeps, and which timeline each device gets."""

import time

import pytest
import torch

from quantbench.trackers.clock import Clock, clock_for, time_call


@pytest.mark.parametrize("seconds", [0.02, 0.1])
def test_cpu_clock_measures_a_known_sleep(seconds):
    measured = time_call(lambda: time.sleep(seconds), Clock())
    # sleep never returns early; a busy machine may return late, hence the generous upper bound
    assert seconds <= measured < seconds + 0.25


def test_marks_are_seconds_between_two_points_in_order():
    clock = Clock()
    first = clock.mark()
    time.sleep(0.01)
    second = clock.mark()
    assert clock.seconds(first, second) >= 0.01
    assert clock.seconds(second, first) <= -0.01


@pytest.mark.parametrize(("device", "cuda"), [("cuda", True), ("cuda:1", True), ("cpu", False)])
def test_clock_for_picks_cuda_events_only_for_cuda_devices(device, cuda):
    assert clock_for(device) == Clock(cuda=cuda)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_time_work_queued_on_the_stream():
    """A kernel that sleeps on the device: host time of the launch would be ~0, the events' is not."""
    measured = time_call(lambda: torch.cuda._sleep(50_000_000), Clock(cuda=True))  # ~tens of ms of GPU cycles
    assert measured > 0.005
