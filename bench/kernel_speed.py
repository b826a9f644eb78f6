"""Time quantbench's Triton low-bit matmul against fp16 `torch.matmul` (cuBLAS) on a CUDA GPU.

For each K = N and M (default M in {1, 16, 64, 2048}, K = N in {4096, 8192}), both are timed with
`triton.testing.do_bench`, which clears a 256 MB buffer before every run so weights come from HBM,
not L2 (an fp16 4096² weight would fit in an H100's 50 MB L2). Reported per shape: median time,
speed-up over fp16, the ideal speed-up at small M (16 / effective bits), and the share of the
memory-bandwidth roofline each reaches (bytes that must move / time / peak bandwidth).

Run: `.venv/bin/python bench/kernel_speed.py [--bits 4 --group-size 128] [--bandwidth-gbs 3350]`.
Needs CUDA; elsewhere it exits with code 2 (the kernels are checked on CPU by tests/kernels).
The first call per shape autotunes (not timed).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
from functools import partial

import torch

# Peak HBM bandwidth in GB/s (1e9 B/s) from the vendors' spec sheets, matched on the device name.
PEAK_BANDWIDTH_GBS = {
    "H100 SXM": 3350,
    "H100 80GB HBM3": 3350,
    "H100 PCIe": 2000,
    "H100 NVL": 3900,
    "H200": 4800,
    "A100-SXM4-80GB": 2039,
    "A100-SXM4-40GB": 1555,
    "A100 80GB PCIe": 1935,
    "L40S": 864,
    "A10": 600,
    "RTX 4090": 1008,
}


def peak_bandwidth(name: str) -> float | None:
    for key, gbs in PEAK_BANDWIDTH_GBS.items():
        if key in name:
            return gbs * 1e9
    return None


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))  # format.PACKABLE_BITS
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--symmetric", action="store_true", help="no zero points (default: asymmetric)")
    parser.add_argument("--m", type=parse_ints, default=[1, 16, 64, 2048], help="rows, comma-separated")
    parser.add_argument("--kn", type=parse_ints, default=[4096, 8192], help="K = N sizes, comma-separated")
    parser.add_argument("--bandwidth-gbs", type=float, help="peak memory bandwidth (default: from the GPU name)")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("bench/kernel_speed.py needs a CUDA GPU and torch sees none; on CPU run tests/kernels", file=sys.stderr)
        return 2
    if importlib.util.find_spec("triton") is None:
        print("bench/kernel_speed.py needs triton (pip install triton)", file=sys.stderr)
        return 2

    import triton
    import triton.testing

    from quantbench.kernels import reference, triton_matmul
    from quantbench.kernels.format import pack_linear_weight

    device_name = torch.cuda.get_device_name()
    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else peak_bandwidth(device_name)
    peak = f"peak bandwidth {bandwidth / 1e9:.0f} GB/s" if bandwidth else "peak bandwidth unknown (--bandwidth-gbs)"
    print(
        f"# {device_name}, {datetime.date.today()}, torch {torch.__version__}, triton {triton.__version__}; "
        f"w{args.bits} g{args.group_size} {'sym' if args.symmetric else 'asym'}, fp16 activations; {peak}"
    )
    print("| K=N | M | kernel | triton µs | fp16 µs | speed-up | ideal 16/b_eff | triton % BW | fp16 % BW |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.kn:
        gen = torch.Generator(device="cuda").manual_seed(0)
        dense = torch.randn(size, size, device="cuda", generator=gen, dtype=torch.float16) * 0.02
        packed = pack_linear_weight(dense, args.bits, args.group_size, args.symmetric)
        weight_fp16 = reference.dequantize(packed, torch.float16)  # (K, N): the same weights, unpacked
        del dense
        b_eff = 8 * packed.nbytes() / (size * size)
        for m in args.m:
            x = torch.randn(m, size, device="cuda", generator=gen, dtype=torch.float16)
            out = triton_matmul.matmul(x, packed)  # autotunes on first call for this shape
            expected = x.float() @ weight_fp16.float()
            error = ((out.float() - expected).abs().max() / expected.abs().max()).item()
            if error > 1e-2:
                print(f"K=N={size} M={m}: relative error {error:.2e} vs the reference; not timing", file=sys.stderr)
                return 1
            # Median ms -> s. The Triton time includes the fp32 split-K buffer's memset and the cast
            # back to fp16: both are part of what a layer pays.
            t_q = triton.testing.do_bench(partial(triton_matmul.matmul, x, packed), return_mode="median") * 1e-3
            t_h = triton.testing.do_bench(partial(torch.matmul, x, weight_fp16), return_mode="median") * 1e-3
            io = 2 * m * size * 2  # fp16 activations in, fp16 result out
            share_q = f"{100 * (packed.nbytes() + io) / bandwidth / t_q:.0f}%" if bandwidth else "-"
            share_h = f"{100 * (2 * size * size + io) / bandwidth / t_h:.0f}%" if bandwidth else "-"
            print(
                f"| {size} | {m} | {triton_matmul.kernel_for(m)} | {t_q * 1e6:.1f} | {t_h * 1e6:.1f} | "
                f"{t_h / t_q:.2f}x | {16 / b_eff:.2f}x | {share_q} | {share_h} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
