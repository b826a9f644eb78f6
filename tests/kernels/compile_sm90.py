"""Compile quantbench's Triton kernels for an H100 (sm_90) without a GPU: ptxas ships with triton.

The interpreter accepts programs the GPU compiler rejects (tl.dot shape limits, dtype rules), so
tests run this script in a fresh process with TRITON_INTERPRET unset:
    python tests/kernels/compile_sm90.py gemv|splitk|gemm
It prints one line per variant and exits 1 if any failed to compile.
"""

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from quantbench.kernels import triton_matmul as tm

TARGET = GPUTarget("cuda", 90, 32)
POINTERS = {"qweight_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "M_BUCKET": "i32"}
# (activation dtype, bits, has zeros, scale/zero dtype): every dtype at 4 bits, the other widths
# once (3 bits: the straddling-code path), and the bf16/fp32 scales converters keep (HQQ, GPTQModel).
VARIANTS = [
    ("fp16", 4, True, "fp16"),
    ("bf16", 4, True, "fp16"),
    ("fp32", 4, False, "fp16"),
    ("fp16", 2, True, "fp16"),
    ("fp16", 8, False, "fp16"),
    ("fp16", 3, True, "fp16"),
    ("bf16", 3, True, "bf16"),
    ("fp32", 4, True, "fp32"),
]


def largest_tile(configs: list[triton.Config]) -> triton.Config:
    """The config with the most weight values per program: the one most likely to break limits."""
    return max(configs, key=lambda c: c.kwargs.get("BLOCK_M", 1) * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])


CONFIGS = {
    kind: largest_tile(c)
    for kind, c in (("gemv", tm.GEMV_CONFIGS), ("splitk", tm.SPLITK_CONFIGS), ("gemm", tm.GEMM_CONFIGS))
}


def compile_variant(kind: str, dtype: str, bits: int, has_zeros: bool, scale_dtype: str) -> None:
    config = CONFIGS[kind]
    kernel = tm._gemv_kernel if kind == "gemv" else tm._dot_kernel
    out = dtype if kind == "gemm" else "fp32"
    constexprs = dict(BITS=bits, GROUP_SIZE=128, HAS_ZEROS=has_zeros, **config.kwargs)
    if kind != "gemv":
        constexprs["ATOMIC"] = kind != "gemm"
    names = kernel.arg_names
    signature = {name: "constexpr" for name in names}
    scales = f"*{scale_dtype}"
    signature.update(POINTERS, x_ptr=f"*{dtype}", scales_ptr=scales, zeros_ptr=scales, out_ptr=f"*{out}")
    source = ASTSource(
        fn=kernel,
        signature={name: signature[name] for name in names},
        constexprs={(names.index(k),): v for k, v in constexprs.items()},
    )
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    assert triton.compile(source, target=TARGET, options=options).asm["cubin"]


def main(kind: str) -> int:
    failed = 0
    for dtype, bits, has_zeros, scale_dtype in VARIANTS:
        name = f"{kind} {dtype} w{bits} zeros={has_zeros} scales={scale_dtype}"
        try:
            compile_variant(kind, dtype, bits, has_zeros, scale_dtype)
            print(f"{name}: ok")
        except Exception as exc:  # report every variant, then fail
            failed += 1
            print(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[:3]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
