"""Triton kernels for x @ W with W in quantbench's packed format (see `format.py`).

Three kernels, chosen by the number of activation rows M (the split follows gemlite):

- `gemv` (M = 1, decode): no `tl.dot`. Each program owns BLOCK_N output columns and one of
  SPLIT_K slices of K; it dequantizes a (BLOCK_K, BLOCK_N) tile, multiplies by the activation
  slice and reduces over K with `tl.sum`; the slices meet through `atomic_add` into fp32.
- `splitk_gemm` (2 ≤ M ≤ 64): `tl.dot` with M padded to a 16-row block, K split the same way,
  so a small M still launches enough programs to keep every SM reading weights.
- `gemm` (M > 64, prefill): classic tiled `tl.dot` over all of K, grouped program order for L2 reuse.

Every kernel accumulates in fp32 and dequantizes as (code - zero) * scale in fp32, which is
exactly `reference.matmul` up to summation order and the rounding of dequantized weights to the
activation dtype before `tl.dot`. A BLOCK_K tile always lies inside one quantization group
(configs with BLOCK_K > group size or K % (BLOCK_K * SPLIT_K) != 0 are pruned), so each tile loads
one row of scales and zeros.

Under TRITON_INTERPRET=1 (CPU tests) the autotuner is bypassed: it cannot time configs without
a GPU, so the first interpreter config that survives pruning is launched directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from quantbench.errors import QuantbenchError
from quantbench.kernels.format import KERNEL_GROUP_MULTIPLE, PackedWeight

GEMV_MAX_M = 1
SPLITK_MAX_M = 64
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _dequant_tile(
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    k_start,
    offs_n,
    N,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """fp32 weights for rows [k_start, k_start + BLOCK_K) and columns offs_n; one group."""
    offs_k = k_start + tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    if 32 % BITS == 0:
        PER_WORD: tl.constexpr = 32 // BITS
        # Each word is loaded by its PER_WORD rows; the repeats hit L1 and keep the unpacking a plain shift.
        words = tl.load(qweight_ptr + (offs_k // PER_WORD)[:, None] * N + offs_n[None, :], mask=mask_n[None, :])
        shifts = (offs_k % PER_WORD) * BITS
        codes = ((words >> shifts[:, None]) & ((1 << BITS) - 1)).to(tl.float32)
    else:
        # 3 bits: a code may straddle two words. Its low `in_lo` bits come from its own word (the
        # arithmetic shift's sign bits are masked off), the rest from the next word, which is read
        # only where a code straddles (never past the end: K fills whole words).
        bit = offs_k * BITS
        word = bit // 32
        shift = bit % 32
        in_lo = tl.minimum(32 - shift, BITS)
        lo = tl.load(qweight_ptr + word[:, None] * N + offs_n[None, :], mask=mask_n[None, :])
        straddles = (shift + BITS > 32)[:, None] & mask_n[None, :]
        hi = tl.load(qweight_ptr + (word + 1)[:, None] * N + offs_n[None, :], mask=straddles, other=0)
        low_bits = (lo >> shift[:, None]) & ((1 << in_lo[:, None]) - 1)
        codes = ((low_bits | (hi << in_lo[:, None])) & ((1 << BITS) - 1)).to(tl.float32)
    group = k_start // GROUP_SIZE
    scale = tl.load(scales_ptr + group * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zero = tl.load(zeros_ptr + group * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        return (codes - zero[None, :]) * scale[None, :]
    else:
        return (codes - (1 << (BITS - 1))) * scale[None, :]


@triton.jit
def _gemv_kernel(
    x_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    M_BUCKET,  # autotune key only
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_per_split = K // SPLIT_K
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k_start in range(pid_k * k_per_split, (pid_k + 1) * k_per_split, BLOCK_K):
        x = tl.load(x_ptr + row * stride_xm + k_start + tl.arange(0, BLOCK_K)).to(tl.float32)
        w = _dequant_tile(qweight_ptr, scales_ptr, zeros_ptr, k_start, offs_n, N, BITS, GROUP_SIZE, HAS_ZEROS, BLOCK_K)
        acc += tl.sum(x[:, None] * w, axis=0)
    tl.atomic_add(out_ptr + row * N + offs_n, acc, mask=offs_n < N)


@triton.jit
def _dot_kernel(
    x_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    M_BUCKET,  # autotune key only
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ATOMIC: tl.constexpr,
):
    # Grouped order: GROUP_M row blocks sweep the same column blocks back to back, so weight
    # tiles are reused from L2 while they are hot (matters only when there are many row blocks).
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_per_split = K // SPLIT_K
    for k_start in range(pid_k * k_per_split, (pid_k + 1) * k_per_split, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        w = _dequant_tile(qweight_ptr, scales_ptr, zeros_ptr, k_start, offs_n, N, BITS, GROUP_SIZE, HAS_ZEROS, BLOCK_K)
        # "ieee": fp32 activations must not silently drop to tf32; fp16/bf16 operands ignore it.
        acc = tl.dot(a, w.to(x_ptr.dtype.element_ty), acc, input_precision="ieee")
    out_ptrs = out_ptr + offs_m[:, None] * N + offs_n[None, :]
    mask = mask_m[:, None] & (offs_n[None, :] < N)
    if ATOMIC:
        tl.atomic_add(out_ptrs, acc, mask=mask)
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _cfg(num_warps: int = 4, num_stages: int = 2, **block: int) -> triton.Config:
    return triton.Config(block, num_warps=num_warps, num_stages=num_stages)


# GPU search spaces, seeded from gemlite's H100 cache and torchao's hqq io-bound space
# (../shared/notes/triton-kernels.md §4), kept small: every config is compiled when a shape is first
# tuned, and tiles whose dequantized block exceeds ~8K values per program spill registers (a
# 64×256×128 split-K tile took 80 s in ptxas for sm_90). Each list ends with a BLOCK_K=16,
# SPLIT_K=1 entry so that every legal shape (group size a multiple of 16) keeps a config.
GEMV_CONFIGS = [
    _cfg(num_warps=w, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk)
    for bn in (128, 256)
    for bk in (16, 32)
    for sk in (4, 8, 16)
    for w in (2, 4)
] + [_cfg(BLOCK_N=128, BLOCK_K=16, SPLIT_K=1)]
SPLITK_CONFIGS = [
    _cfg(num_stages=3, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, GROUP_M=1)
    for bm in (16, 32, 64)
    for bn in (64, 128)
    for bk in (32, 64)
    for sk in (4, 8)
] + [_cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=16, SPLIT_K=1, GROUP_M=1)]
GEMM_CONFIGS = [
    _cfg(num_warps=w, num_stages=s, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1, GROUP_M=8)
    for w, s, bm, bn, bk in (
        (8, 3, 128, 128, 32),
        (4, 4, 128, 64, 64),
        (4, 4, 64, 128, 32),
        (8, 3, 128, 256, 32),
        (4, 4, 64, 64, 64),
        (4, 3, 64, 64, 16),
    )
]

# Interpreter: big tiles (each program is a numpy loop step, so fewer programs run faster), and a
# split of 2 so the atomic reduction across K slices is exercised.
INTERPRET_CONFIGS = {
    "gemv": [_cfg(BLOCK_N=128, BLOCK_K=bk, SPLIT_K=sk) for bk in (64, 32, 16) for sk in (2, 1)],
    "splitk": [
        _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=bk, SPLIT_K=sk, GROUP_M=1) for bk in (64, 32, 16) for sk in (2, 1)
    ],
    "gemm": [_cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=bk, SPLIT_K=1, GROUP_M=8) for bk in (64, 32, 16)],
}


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop configs that would read a tile across a group boundary or leave a ragged K slice, and,
    where others remain, those padding M to a row block taller than needed. Signature as triton's
    `early_config_prune`."""
    args = {**named_args, **kwargs}
    k_in, group, m_bucket = args["K"], args["GROUP_SIZE"], args["M_BUCKET"]
    valid = [
        c
        for c in configs
        if c.kwargs["BLOCK_K"] <= group
        and group % c.kwargs["BLOCK_K"] == 0
        and k_in % (c.kwargs["BLOCK_K"] * c.kwargs.get("SPLIT_K", 1)) == 0
    ]
    fitted = [c for c in valid if c.kwargs.get("BLOCK_M", 1) <= max(16, m_bucket)]
    return fitted or valid


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotuned(kernel, configs: list[triton.Config], atomic: bool, do_bench: Callable | None = None):
    """`kernel` under triton's autotuner with our pruning; `do_bench` replaces the GPU timer (tests
    pass a CPU clock to run the autotuner itself under the interpreter)."""
    return triton.autotune(
        configs=configs,
        key=["M_BUCKET", "N", "K", "BITS", "GROUP_SIZE", "HAS_ZEROS"],
        prune_configs_by={"early_config_prune": prune_configs},
        # Atomic kernels add into `out_ptr`; each timed config must start from zeros.
        reset_to_zero=["out_ptr"] if atomic else None,
        do_bench=do_bench,
    )(kernel)


_TUNED = {
    "gemv": autotuned(_gemv_kernel, GEMV_CONFIGS, atomic=True),
    "splitk": autotuned(_dot_kernel, SPLITK_CONFIGS, atomic=True),
    "gemm": autotuned(_dot_kernel, GEMM_CONFIGS, atomic=False),
}
_RAW = {"gemv": _gemv_kernel, "splitk": _dot_kernel, "gemm": _dot_kernel}


def _grid(kind: str, m: int, n: int) -> Callable[[dict], tuple[int, ...]]:
    if kind == "gemv":
        return lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"], m)
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])


def check_supported(x: torch.Tensor, weight: PackedWeight) -> None:
    """Raise a one-line QuantbenchError for inputs the kernels cannot take."""
    if x.dim() != 2 or x.shape[1] != weight.in_features:
        raise QuantbenchError(f"x must be (M, {weight.in_features}), got {tuple(x.shape)}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise QuantbenchError(f"activations must be fp16, bf16 or fp32, got {x.dtype}")
    if weight.group_size % KERNEL_GROUP_MULTIPLE:
        raise QuantbenchError(
            f"group size {weight.group_size} is not a multiple of {KERNEL_GROUP_MULTIPLE} (Triton kernel tiles)"
        )
    if x.device != weight.qweight.device:
        raise QuantbenchError(f"x is on {x.device} but the weight is on {weight.qweight.device}")


def _launch(kind: str, x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    check_supported(x, weight)
    x = x.contiguous()
    m, n = x.shape[0], weight.out_features
    atomic = kind != "gemm"
    # Split-K slices meet in an fp32 buffer (Triton has no bf16 atomic_add, and fp16 sums lose bits).
    out = torch.zeros((m, n), device=x.device, dtype=torch.float32) if atomic else x.new_empty((m, n))
    # The kernels index the weight tensors as row-major; .contiguous() is free when they already are.
    zeros = weight.zeros if weight.zeros is not None else weight.scales  # never read when HAS_ZEROS=False
    args = dict(
        x_ptr=x,
        qweight_ptr=weight.qweight.contiguous(),
        scales_ptr=weight.scales.contiguous(),
        zeros_ptr=zeros.contiguous(),
        out_ptr=out,
        M=m,
        N=n,
        K=weight.in_features,
        stride_xm=x.stride(0),
        M_BUCKET=_next_pow2(m),
        BITS=weight.bits,
        GROUP_SIZE=weight.group_size,
        HAS_ZEROS=weight.zeros is not None,
    )
    if kind != "gemv":
        args["ATOMIC"] = atomic
    if _interpreting():
        configs = prune_configs(INTERPRET_CONFIGS[kind], args)
        if not configs:
            raise QuantbenchError(f"no {kind} config fits K={weight.in_features}, group {weight.group_size}")
        _RAW[kind][_grid(kind, m, n)](**args, **configs[0].kwargs)
    else:
        _TUNED[kind][_grid(kind, m, n)](**args)
    return out.to(x.dtype)


def gemv(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """x (M, K) @ W -> (M, N), one program row per activation row; meant for M = 1."""
    return _launch("gemv", x, weight)


def splitk_gemm(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """x (M, K) @ W -> (M, N) with tl.dot and split-K; meant for 2 ≤ M ≤ 64."""
    return _launch("splitk", x, weight)


def gemm(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """x (M, K) @ W -> (M, N), tiled tl.dot over all of K; meant for M > 64."""
    return _launch("gemm", x, weight)


def kernel_for(m: int) -> str:
    """Which kernel `matmul` runs for M rows."""
    if m <= GEMV_MAX_M:
        return "gemv"
    return "splitk" if m <= SPLITK_MAX_M else "gemm"


_BY_NAME = {"gemv": gemv, "splitk": splitk_gemm, "gemm": gemm}


def matmul(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """x (M, K) @ W -> (M, N) in x's dtype, dispatching by M; same contract as `reference.matmul`."""
    return _BY_NAME[kernel_for(x.shape[0])](x, weight)
