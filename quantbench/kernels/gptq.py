"""Convert a GPTQ checkpoint's tensors into quantbench's packed format.

GPTQ (AutoGPTQ / GPTQModel) stores, for a layer with K inputs, N outputs, G groups:

    qweight (K * bits / 32, N) int32   codes packed along K       -- the same layout as ours
    qzeros  (G, N * bits / 32) int32   zero points packed along N, the same bit stream as qweight's
    scales  (G, N) fp16 (GPTQModel on CPU: bf16)
    g_idx   (K,) int32, optional       group of each input row; not sorted when desc_act/act-order

Old checkpoints (format "gptq", AutoGPTQ and GPTQModel v1) store zero − 1; GPTQModel's internal
"gptq_v2" stores the zero itself. With act-order the rows of one group are scattered over K; we
sort the rows by group, which makes groups contiguous again, and the layer permutes its inputs
the same way (x[:, perm] @ W[perm] = x @ W).
"""

from __future__ import annotations

import torch

from quantbench.errors import QuantbenchError
from quantbench.kernels.format import PACKABLE_BITS, PackedWeight, pack_codes, unpack_codes


def unpack_along_n(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """(G, N * bits / 32) int32 packed along N -> (G, N) int64 codes. The bit stream is the one
    qweight uses along K (3 bits included), so this is `unpack_codes` on the transpose."""
    return unpack_codes(packed.T.contiguous(), bits).T.contiguous().to(torch.int64)


def convert_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    g_idx: torch.Tensor | None = None,
    zeros_minus_one: bool = True,
) -> tuple[PackedWeight, torch.Tensor | None]:
    """The packed weight and the input permutation (None when groups are already contiguous).

    `zeros_minus_one`: True for checkpoints in the "gptq" (v1) format, False for "gptq_v2".
    """
    if bits not in PACKABLE_BITS:
        raise QuantbenchError(f"GPTQ bits={bits} not supported; the packed format has {PACKABLE_BITS}")
    k_in, n_out = qweight.shape[0] * 32 // bits, qweight.shape[1]
    n_groups = scales.shape[0]
    if scales.shape[1] != n_out or qzeros.shape != (n_groups, n_out * bits // 32) or k_in % n_groups:
        raise QuantbenchError(
            f"inconsistent GPTQ shapes: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}, "
            f"scales {tuple(scales.shape)} for {bits} bits"
        )
    group_size = k_in // n_groups
    # Scales keep their dtype (fp16, or bf16 from GPTQModel on CPU); integer zeros ≤ 256 are exact in either.
    zeros = unpack_along_n(qzeros, bits) + (1 if zeros_minus_one else 0)
    zeros = zeros.to(scales.dtype)

    contiguous = torch.arange(k_in, device=qweight.device) // group_size
    if g_idx is None or torch.equal(g_idx.to(contiguous.dtype), contiguous):
        return PackedWeight(qweight.to(torch.int32), scales, zeros, bits, group_size), None
    if g_idx.shape != (k_in,):
        raise QuantbenchError(f"g_idx must have shape ({k_in},), got {tuple(g_idx.shape)}")
    perm = torch.argsort(g_idx.to(torch.int64), stable=True)
    if not torch.equal(g_idx.to(torch.int64)[perm], contiguous):
        raise QuantbenchError(f"g_idx does not put exactly {group_size} rows in each of {n_groups} groups")
    codes = unpack_codes(qweight.to(torch.int32), bits)[perm]
    return PackedWeight(pack_codes(codes, bits), scales, zeros, bits, group_size), perm
