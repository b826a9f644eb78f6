"""Pure-PyTorch references for the Triton kernels, with the same signatures.

They define what the kernels must compute: dequantize in fp32, multiply in fp32, return the
activation dtype. QuantLinear runs them where there is no CUDA device.
"""

from __future__ import annotations

import torch

from quantbench.kernels.format import PackedWeight, dequantize_codes, unpack_codes


def dequantize(weight: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weights (K, N) that `weight` stands for."""
    codes = unpack_codes(weight.qweight, weight.bits)
    return dequantize_codes(codes, weight.scales, weight.zeros, weight.bits, dtype)


def matmul(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """x (M, K) @ W (K, N) -> (M, N) in x's dtype, computed in fp32."""
    return (x.float() @ dequantize(weight, torch.float32)).to(x.dtype)
