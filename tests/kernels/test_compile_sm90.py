import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton.backends.nvidia")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gemv", "splitk", "gemm"])
def test_kernels_compile_for_h100(kind):
    """The GPU compiler (ptxas for sm_90, bundled with triton) accepts each kernel's largest tile in
    fp16/bf16/fp32, at 2/3/4/8 bits and with fp16/bf16/fp32 scales; the interpreter would not notice
    if it did not."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_sm90.py")
    result = subprocess.run([sys.executable, str(script), kind], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
