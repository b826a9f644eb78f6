"""What a method stores, as the planner prices it: `Backend.layout(params, device)` returns one.

Every method keeps the embeddings, the output head (transformers passes lm_head in
`modules_to_not_convert`), norms, biases and MoE routers in the compute dtype and quantizes the
linear layers inside the blocks; `linear_bytes` counts one of those. Per-tensor serialized
metadata of under 200 bytes (bnb's JSON quant_state, hqq's meta) is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Layout:
    """One method at one setting on one device."""

    method: str
    label: str  # what the planner prints, e.g. "gptq 4-bit group 128"
    bits: int  # nominal bits per code; 16/32 for the unquantized baseline
    dtype: str  # compute dtype: unquantized tensors and activations
    linear_bytes: Callable[[int, int], int]  # bytes of one (rows, cols) linear weight, no bias
    is_quantized: bool = True
    # True when a prefill matmul first rebuilds a dense copy of the weight in the compute dtype
    # (the fused kernels read the packed codes directly).
    dequantizes_weights: bool = False
    # The method also quantizes routed experts (transformers 5's fused 3-D tensors); most libraries
    # replace nn.Linear layers only and keep them in the compute dtype. Set from `Backend.layer_kinds`.
    quantizes_experts: bool = False

    def quantizes(self, kind: str) -> bool:
        """Whether weights of this planner kind (planner/weights.py) are stored in this layout."""
        return self.is_quantized and (kind == "linear" or (kind == "experts" and self.quantizes_experts))

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


def groups_per_row(group_size: int, cols: int) -> int:
    """Scale groups along one row of `cols` inputs; -1 = one per row, a partial group counts whole."""
    return 1 if group_size == -1 else -(-cols // group_size)


def grouping(group_size: int) -> str:
    """The label's words for a group size."""
    return "per row" if group_size == -1 else f"group {group_size}"
