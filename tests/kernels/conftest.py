"""Kernel tests run the Triton kernels on the CPU through triton's interpreter.

TRITON_INTERPRET is read when a function is decorated with @triton.jit: ours, when
quantbench.kernels.triton_matmul is imported, and triton's own library functions (tl.zeros, ...),
when triton is imported. So it must be set before triton is imported. Another test module may
already have imported it during collection (bitsandbytes imports triton); then triton's Python
modules are dropped so the next import rebuilds them in interpreter mode. The compiled extension
`triton._C` stays: it cannot be initialised twice, and it does not depend on the mode.
"""

import os
import sys

import pytest
import torch


def _use_triton_interpreter() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    os.environ["TRITON_INTERPRET"] = "1"
    stale = [
        name
        for name in sys.modules
        if (name == "triton" or name.startswith("triton.")) and not name.startswith("triton._C")
    ]
    for name in [*stale, "quantbench.kernels.triton_matmul"]:
        sys.modules.pop(name, None)


_use_triton_interpreter()


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.fixture
def relative_error():
    """max |out - ref| / max |ref|: the error relative to the output's scale."""
    return _relative_error


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def resolved(tiny_model_dir):
    """The tiny Llama (tests/conftest.py), resolved as the adapters take it."""
    from quantbench import models
    from quantbench.spec import ModelRef

    return models.resolve(ModelRef(str(tiny_model_dir)))
