"""Why transformers' HQQ KV cache diverged at hqq's default axis: a direct simulation with hqq's Quantizer.

transformers' QuantizedCache (residual_length=0, as quantbench runs it) re-quantizes the whole
dequantized cache every time tokens are added. This does the same to one random key tensor shaped as a
cache (batch 1, 4 heads, 256 tokens, 64 channels, some channels wider than others as keys' are): 128
tokens quantized at once, then 128 more added one at a time, int4, group 64. It prints the relative
error of the result and of quantizing the whole tensor once, for hqq at axis 0 (transformers' default)
and 1, with and without hqq's optimizer, and for quanto's axis 0.

    nice .venv/bin/python bench/kv_hqq_axis.py
"""

from __future__ import annotations

import torch
from hqq.core.quantize import Quantizer
from optimum.quanto import MaxOptimizer, qint4, quantize_weight

PREFILL, TOKENS = 128, 256


def _hqq(axis: int, optimize: bool):
    def qdq(x: torch.Tensor) -> torch.Tensor:
        q, meta = Quantizer.quantize(
            x.contiguous(), axis=axis, device="cpu", compute_dtype=torch.float32, nbits=4, group_size=64,
            optimize=optimize,
        )  # fmt: skip
        meta["compute_dtype"] = torch.float32
        return Quantizer.dequantize(q, meta)

    return qdq


def _quanto(x: torch.Tensor) -> torch.Tensor:
    scale, zero = MaxOptimizer()(x, qint4, 0, 64)
    return quantize_weight(x, qint4, 0, scale, zero, 64).dequantize()


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    torch.manual_seed(0)
    keys = torch.randn(1, 4, TOKENS, 64) * torch.linspace(0.2, 4.0, 64)
    cases = {f"hqq axis {a}, optimize {o}": _hqq(a, o) for a in (0, 1) for o in (True, False)}
    for name, qdq in (cases | {"quanto axis 0": _quanto}).items():
        cache = qdq(keys[:, :, :PREFILL])
        for t in range(PREFILL, TOKENS):
            cache = qdq(torch.cat([cache, keys[:, :, t : t + 1]], dim=-2))
        print(f"{name}: quantized once {_error(qdq(keys), keys):.4f}, grown {_error(cache, keys):.4f}")


if __name__ == "__main__":
    main()
