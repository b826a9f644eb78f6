"""Each Triton kernel against `reference.matmul`, under TRITON_INTERPRET=1 (see conftest.py).

Error is max |out - ref| / max |ref|. fp32 activations: both sides compute in fp32, only the
summation order differs (measured ≤ 8.1e-7 over this file's grid, interpreter, 2026-11; bound 1e-5).
fp16 activations: the dot kernels round dequantized weights to fp16 before tl.dot and every kernel
rounds its output to fp16 (measured ≤ 8.4e-4 for split-K/GEMM, 3.6e-4 for GEMV; bound 3e-3).
"""

import time

import pytest
import torch

triton = pytest.importorskip("triton")

from quantbench.errors import QuantbenchError  # noqa: E402
from quantbench.kernels import reference  # noqa: E402
from quantbench.kernels import triton_matmul as tm  # noqa: E402
from quantbench.kernels.format import PackedWeight, pack_linear_weight  # noqa: E402

K, N = 256, 192  # N not a multiple of the 128-wide column tiles, so the masks are exercised
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3}
KERNELS = {"gemv": tm.gemv, "splitk": tm.splitk_gemm, "gemm": tm.gemm}


def make_weight(bits: int, group_size: int, symmetric: bool, n: int = N, k: int = K, seed: int = 0) -> PackedWeight:
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05
    return pack_linear_weight(weight, bits, group_size, symmetric)


def activations(m: int, dtype: torch.dtype, k: int = K) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("m", [1, 3, 16, 33])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bits", [4, 8])
def test_matmul_matches_reference(bits, group_size, m, dtype, relative_error):
    """`matmul` dispatches M=1 to gemv and 3..33 to split-K; asymmetric for 4 bits, symmetric for 8."""
    weight = make_weight(bits, group_size, symmetric=bits == 8)
    x = activations(m, dtype)
    out = tm.matmul(x, weight)
    assert out.dtype == dtype and out.shape == (m, N)
    assert relative_error(out, reference.matmul(x, weight)) < TOLERANCE[dtype]


@pytest.mark.parametrize("m", [1, 3, 16, 33])
@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_every_kernel_handles_every_m(kind, m, dtype, relative_error):
    weight = make_weight(4, 64, symmetric=False)
    x = activations(m, dtype)
    assert relative_error(KERNELS[kind](x, weight), reference.matmul(x, weight)) < TOLERANCE[dtype]


@pytest.mark.parametrize(
    ("bits", "group_size", "symmetric"),
    [(2, 32, False), (2, 64, True), (3, 32, False), (3, 128, True), (3, -1, False), (4, -1, True), (8, -1, False)],
)
def test_other_formats(bits, group_size, symmetric, relative_error):
    """3-bit codes straddle words (see format.py); each kernel must reassemble them."""
    weight = make_weight(bits, group_size, symmetric)
    for m in (1, 5):
        x = activations(m, torch.float32)
        assert relative_error(tm.matmul(x, weight), reference.matmul(x, weight)) < 1e-5


@pytest.mark.parametrize("kind", list(KERNELS))
def test_3bit_every_kernel(kind, relative_error):
    weight = make_weight(3, 64, symmetric=False)
    x = activations(5, torch.float16)
    assert relative_error(KERNELS[kind](x, weight), reference.matmul(x, weight)) < TOLERANCE[torch.float16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_converted_float_zero_points_and_scale_dtypes(dtype, relative_error):
    """What the HQQ converter produces: fractional zero points, scales and zeros in the source's dtype."""
    gen = torch.Generator().manual_seed(1)
    base = make_weight(4, 32, symmetric=False)
    zeros = (torch.rand(base.scales.shape, generator=gen) * 15).to(dtype)
    weight = PackedWeight(base.qweight, base.scales.to(dtype), zeros, 4, 32)
    for m in (1, 5):
        x = activations(m, torch.float32)
        assert relative_error(tm.matmul(x, weight), reference.matmul(x, weight)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_prefill_dispatches_to_gemm(dtype, relative_error):
    assert tm.kernel_for(1) == "gemv" and tm.kernel_for(64) == "splitk" and tm.kernel_for(65) == "gemm"
    weight = make_weight(4, 128, symmetric=False, n=256, k=512)
    x = activations(80, dtype, k=512)
    assert relative_error(tm.matmul(x, weight), reference.matmul(x, weight)) < TOLERANCE[dtype]


def test_strided_activations(relative_error):
    weight = make_weight(4, 32, symmetric=False)
    wide = activations(4, torch.float32, k=2 * K)
    x = wide[:, :K]  # row stride 2K
    assert relative_error(tm.matmul(x, weight), reference.matmul(x, weight)) < 1e-5


def test_non_contiguous_weight_tensors(relative_error):
    """Converters can hand over transposed views (GPTQ zeros unpacked along N); the kernels index
    row-major, so they must not read such a view's storage as if it were laid out (K/g, N)."""
    base = make_weight(4, 32, symmetric=False)
    zeros = base.zeros.T.contiguous().T  # same values, column-major storage
    weight = PackedWeight(base.qweight, base.scales.T.contiguous().T, zeros, 4, 32)
    assert not weight.zeros.is_contiguous()
    x = activations(3, torch.float32)
    assert relative_error(tm.matmul(x, weight), reference.matmul(x, base)) < 1e-5


@pytest.mark.parametrize(
    ("x", "weight", "message"),
    [
        (torch.ones(2, K + 8), make_weight(4, 32, False), rf"x must be \(M, {K}\), got \(2, {K + 8}\)"),
        (torch.ones(2, 3, K), make_weight(4, 32, False), "x must be"),
        (torch.ones(2, K, dtype=torch.float64), make_weight(4, 32, False), "activations must be fp16, bf16 or fp32"),
        (torch.ones(2, 64), make_weight(4, 8, False, k=64), "group size 8 is not a multiple of 16"),
    ],
)
def test_unsupported_inputs_are_rejected(x, weight, message):
    with pytest.raises(QuantbenchError, match=message):
        tm.matmul(x, weight)


def test_pruning_keeps_tiles_inside_groups_and_k_slices_even():
    args = {"K": 512, "GROUP_SIZE": 32, "M_BUCKET": 4}
    for configs in (tm.GEMV_CONFIGS, tm.SPLITK_CONFIGS, tm.GEMM_CONFIGS):
        kept = tm.prune_configs(configs, args)
        assert kept
        for config in kept:
            block_k, split_k = config.kwargs["BLOCK_K"], config.kwargs.get("SPLIT_K", 1)
            assert block_k <= 32 and 32 % block_k == 0 and 512 % (block_k * split_k) == 0
    assert all(c.kwargs["BLOCK_M"] == 16 for c in tm.prune_configs(tm.SPLITK_CONFIGS, args))
    assert {c.kwargs["BLOCK_M"] for c in tm.prune_configs(tm.SPLITK_CONFIGS, {**args, "M_BUCKET": 64})} == {
        16,
        32,
        64,
    }


def cpu_bench(kernel_call, quantiles):
    start = time.perf_counter()
    kernel_call()
    elapsed = time.perf_counter() - start
    return [elapsed] * len(quantiles)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gemv", "splitk"])
def test_autotuner_path_with_atomic_reset(kind, monkeypatch, relative_error):
    """The GPU launch path (triton.autotune + pruning + reset_to_zero), timed with a CPU clock:
    several configs add into the same output while being timed, and the result must still be right."""
    configs = {
        "gemv": [tm._cfg(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=2) for bn in (64, 128) for bk in (32, 64)],
        "splitk": [tm._cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=bk, SPLIT_K=2, GROUP_M=1) for bk in (32, 64)],
    }[kind]
    kernel = tm._gemv_kernel if kind == "gemv" else tm._dot_kernel
    tuned = tm.autotuned(kernel, configs, atomic=True, do_bench=cpu_bench)
    monkeypatch.setitem(tm._TUNED, kind, tuned)
    monkeypatch.setattr(tm, "_interpreting", lambda: False)
    weight = make_weight(4, 32, symmetric=False)
    x = activations(1 if kind == "gemv" else 5, torch.float32)
    out = tm.gemv(x, weight) if kind == "gemv" else tm.splitk_gemm(x, weight)
    assert relative_error(out, reference.matmul(x, weight)) < 1e-5
    assert tuned.best_config.kwargs["BLOCK_K"] == 32  # BLOCK_K=64 > group size 32 was pruned
