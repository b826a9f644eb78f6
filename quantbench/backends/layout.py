"""What a method stores, as the planner prices it: `Backend.layout(params, device)` returns one.

Every method keeps the embeddings, the output head (transformers passes lm_head in
`modules_to_not_convert`), norms, biases and MoE routers in the compute dtype and quantizes the
linear layers inside the blocks; `linear_bytes` counts one of those. Per-tensor serialized
metadata of under 200 bytes (bnb's JSON quant_state, hqq's meta) is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from quantbench.backends.unit_bits import bits_of

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
    # layer_bits (backends/unit_bits.py): module name -> bits of the units off `bits` (None: kept in
    # `dtype`), and the bytes of one (rows, cols) weight at any bits, the formula `linear_bytes` applies.
    unit_bits: Mapping[str, int | None] = field(default_factory=dict)
    bytes_at_bits: Callable[[int, int, int], int] | None = None

    def module_bytes(self, name: str, rows: int, cols: int) -> int:
        """Bytes of the (rows, cols) weight of the module `name` (e.g. model.layers.3.mlp.down_proj)."""
        bits = bits_of(self.unit_bits, name, self.bits)
        if bits is None:
            return rows * cols * self.dtype_bytes
        return self.linear_bytes(rows, cols) if bits == self.bits else self.bytes_at_bits(rows, cols, bits)

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
