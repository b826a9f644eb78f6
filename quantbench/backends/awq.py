"""AWQ through GPTQModel's own implementation (AutoAWQ is deprecated; transformers v5 loads AWQ
through GPTQModel too). 4-bit GEMM format; on CPU its kernels need bf16/fp16."""

from __future__ import annotations

import torch
from pydantic import Field

from quantbench.backends.base import LayerCodes, int_choice
from quantbench.backends.gptq import GptqModelBackend, GptqModelParams
from quantbench.backends.layout import Layout, grouping, groups_per_row
from quantbench.errors import QuantbenchError
from quantbench.kernels.awq import convert_awq
from quantbench.kernels.format import int32_words

CLIP_BATCH = 64  # GPTQModel's AWQ clip search walks output rows in batches of 64 (or 256)


class AwqParams(GptqModelParams):
    bits: int_choice(4) = Field(4, description="bits per weight code (GPTQModel's AWQ GEMM format is 4-bit only)")
    # Not aliased to the shared `symmetric`: it means the opposite, and stored trials spell it this way.
    zero_point: bool = Field(True, description="a zero point per group (asymmetric range), as AWQ uses by default")


class AwqBackend(GptqModelBackend):
    name = "awq"
    Params = AwqParams
    checkpoint_formats = ("gemm",)

    def pack_backend(self, device: str) -> str:
        # GPTQModel packs AWQ layers with its CUDA GEMM kernel unless told otherwise ("AWQ: CUDA is
        # not available" on CPU); its portable torch kernel writes the same GEMM checkpoint.
        return "awq_torch" if device == "cpu" else "auto"

    def codes_params(self, bits: int, group_size: int, symmetric: bool) -> AwqParams:
        if bits != 4:
            raise QuantbenchError(f"awq gives 4-bit codes only (GPTQModel's AWQ GEMM format), got bits={bits}")
        return AwqParams(group_size=group_size, zero_point=not symmetric)

    def layer_codes(self, tensors: dict[str, torch.Tensor], params: AwqParams, layout: str) -> LayerCodes:
        qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
        return LayerCodes(convert_awq(qweight, qzeros, scales, params.group_size), tensors["bias"])

    def layout(self, params: AwqParams, device: str) -> Layout:
        return Layout(
            self.name,
            f"awq 4-bit {grouping(params.group_size)}",
            4,
            params.compute_dtype,
            lambda rows, cols: _linear_bytes(rows, cols, params.group_size),
        )

    def gptqmodel_config(self, params: AwqParams) -> object:
        from gptqmodel import AWQConfig

        return AWQConfig(bits=params.bits, group_size=params.group_size, sym=not params.zero_point)

    def check_shapes(self, skeleton: torch.nn.Module, params: AwqParams) -> None:
        super().check_shapes(skeleton, params)
        for name, layer in skeleton.named_modules():
            if isinstance(layer, torch.nn.Linear) and name != "lm_head" and layer.out_features % CLIP_BATCH:
                width = layer.out_features
                raise QuantbenchError(f"AWQ needs out_features divisible by {CLIP_BATCH}: layer {name} has {width}")


def _linear_bytes(rows: int, cols: int, group_size: int) -> int:
    """AWQ GEMM: qweight (cols, rows·4/32) int32, qzeros (groups, rows·4/32) int32, scales (groups, rows) fp16."""
    words = int32_words(rows, 4) * 4
    return cols * words + groups_per_row(group_size, cols) * (words + rows * 2)
