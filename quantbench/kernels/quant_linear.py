"""`QuantLinear`: a drop-in nn.Linear whose weight is held in quantbench's packed format.

It runs the Triton kernels when its buffers are on a CUDA device, and the pure-torch reference
otherwise; `force_triton=True` runs the kernels on CPU too, which only works under
TRITON_INTERPRET=1 (that is how the tests exercise them). `kernel` says which path runs and which
method chose the codes (`source`: rtn, gptq, awq, hqq), e.g. "torch reference (no CUDA) on hqq codes".
"""

from __future__ import annotations

import os

import torch
from torch import nn

from quantbench.kernels import reference
from quantbench.kernels.awq import convert_awq
from quantbench.kernels.format import PackedWeight, pack_linear_weight
from quantbench.kernels.gptq import convert_gptq
from quantbench.kernels.hqq import convert_hqq

TRITON_KERNEL = "triton gemv/splitk/gemm"
REFERENCE_KERNEL = "torch reference (no CUDA)"


class QuantLinear(nn.Module):
    """y = x @ W.T + b with W packed; optional `in_perm` reorders input features first (GPTQ act-order)."""

    def __init__(
        self,
        weight: PackedWeight,
        bias: torch.Tensor | None = None,
        in_perm: torch.Tensor | None = None,
        force_triton: bool = False,
        source: str = "rtn",
    ) -> None:
        super().__init__()
        self.source = source
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.bits = weight.bits
        self.group_size = weight.group_size
        self.force_triton = force_triton
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zeros", weight.zeros)
        self.register_buffer("bias", bias)
        self.register_buffer("in_perm", in_perm)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, bits: int, group_size: int, symmetric: bool, force_triton: bool = False
    ) -> QuantLinear:
        """Round-to-nearest quantize `linear`'s weight (see `format.quantize_rtn`)."""
        packed = pack_linear_weight(linear.weight, bits, group_size, symmetric)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(packed, bias, force_triton=force_triton)

    @classmethod
    def from_gptq(
        cls,
        qweight: torch.Tensor,
        qzeros: torch.Tensor,
        scales: torch.Tensor,
        bits: int,
        g_idx: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        zeros_minus_one: bool = True,
        force_triton: bool = False,
    ) -> QuantLinear:
        """From a GPTQ layer's tensors (see `gptq.convert_gptq` for the layout and `zeros_minus_one`)."""
        packed, perm = convert_gptq(qweight, qzeros, scales, bits, g_idx, zeros_minus_one)
        return cls(packed, bias, perm, force_triton=force_triton, source="gptq")

    @classmethod
    def from_awq(
        cls,
        qweight: torch.Tensor,
        qzeros: torch.Tensor,
        scales: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
        force_triton: bool = False,
    ) -> QuantLinear:
        """From an AWQ GEMM layer's tensors (see `awq.convert_awq` for the layout)."""
        return cls(convert_awq(qweight, qzeros, scales, group_size), bias, force_triton=force_triton, source="awq")

    @classmethod
    def from_hqq(cls, layer: nn.Module, force_triton: bool = False) -> QuantLinear:
        """From an `hqq` HQQLinear (see `hqq.convert_hqq`); the bias is kept in hqq's compute dtype."""
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        return cls(convert_hqq(layer), bias, force_triton=force_triton, source="hqq")

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.qweight, self.scales, self.zeros, self.bits, self.group_size)

    @property
    def uses_triton(self) -> bool:
        return self.force_triton or self.qweight.is_cuda

    @property
    def path(self) -> str:
        """The code path this layer runs: the Triton kernels (maybe interpreted) or the reference."""
        if not self.uses_triton:
            return REFERENCE_KERNEL
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return TRITON_KERNEL + " (interpreter)"
        return TRITON_KERNEL

    @property
    def kernel(self) -> str:
        return f"{self.path} on {self.source} codes"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.in_perm is not None:
            rows = rows[:, self.in_perm]
        if self.uses_triton:
            from quantbench.kernels import triton_matmul  # imports triton, which CPU-only installs may lack

            out = triton_matmul.matmul(rows, self.packed)
        else:
            out = reference.matmul(rows, self.packed)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, symmetric={self.zeros is None}, kernel={self.kernel!r}"
        )
