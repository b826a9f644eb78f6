"""Kernel tests run the Triton kernels on the CPU through triton's interpreter.

TRITON_INTERPRET is read when a kernel is decorated, i.e. when quantbench.kernels.triton_matmul is
first imported, so it is set here, before any test module imports it. Set TRITON_INTERPRET=0 to
run them on a GPU instead (the tensors then need moving there; these tests do not).
"""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.fixture
def relative_error():
    """max |out - ref| / max |ref|: the error relative to the output's scale."""
    return _relative_error


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
