"""Convert an AWQ "GEMM" checkpoint's tensors (AutoAWQ, GPTQModel's AWQ) into quantbench's packed format.

AWQ's GEMM layout packs along N, not K. For a layer with K inputs, N outputs and G groups:

    qweight (K, N / 8) int32   4-bit codes of 8 consecutive output columns per word, interleaved
    qzeros  (G, N / 8) int32   zero points (integers, stored as they are), packed the same way
    scales  (G, N) fp16/bf16

Within word j, nibble i (bits 4i..4i+3) holds column 8j + AWQ_ORDER[i], AWQ_ORDER = [0, 2, 4, 6,
1, 3, 5, 7] (gptqmodel/quantization/awq/utils/packing_utils.py: pack_awq_columns; the inverse
AWQ_REVERSE_ORDER is what its dequantize_gemm applies after unpacking). Weights are
(code - zero) * scale, our formula; we un-interleave the columns and repack the codes along K.
"""

from __future__ import annotations

import torch

from quantbench.errors import QuantbenchError
from quantbench.kernels.format import PackedWeight, pack_codes
from quantbench.kernels.gptq import unpack_along_n

AWQ_BITS = 4
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column AWQ_ORDER[i] of its 8


def _uninterleave(nibbles: torch.Tensor) -> torch.Tensor:
    """(rows, N) values in packed nibble order -> natural column order."""
    rows, n_out = nibbles.shape
    natural = torch.empty_like(nibbles)
    natural.view(rows, n_out // 8, 8)[:, :, list(AWQ_ORDER)] = nibbles.view(rows, n_out // 8, 8)
    return natural


def convert_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> PackedWeight:
    """The packed weight an AWQ GEMM layer's tensors stand for; `group_size` -1 = one group."""
    k_in, n_out = qweight.shape[0], qweight.shape[1] * 8
    group = k_in if group_size == -1 else group_size
    if k_in % group or scales.shape != (k_in // group, n_out) or qzeros.shape != (k_in // group, n_out // 8):
        raise QuantbenchError(
            f"inconsistent AWQ shapes for group size {group_size}: qweight {tuple(qweight.shape)}, "
            f"qzeros {tuple(qzeros.shape)}, scales {tuple(scales.shape)}"
        )
    codes = _uninterleave(unpack_along_n(qweight.to(torch.int32), AWQ_BITS))
    zeros = _uninterleave(unpack_along_n(qzeros.to(torch.int32), AWQ_BITS))
    packed = pack_codes(codes.to(torch.uint8), AWQ_BITS)
    return PackedWeight(packed, scales, zeros.to(scales.dtype), AWQ_BITS, group)
