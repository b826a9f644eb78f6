"""AWQ through GPTQModel's own implementation (AutoAWQ is deprecated; transformers v5 loads AWQ
through GPTQModel too). 4-bit GEMM format; on CPU its kernels need bf16/fp16."""

from __future__ import annotations

import torch

from quantbench.backends.base import LayerCodes, int_choice
from quantbench.backends.gptq import GptqModelBackend, GptqModelParams
from quantbench.errors import QuantbenchError
from quantbench.kernels.awq import convert_awq

CLIP_BATCH = 64  # GPTQModel's AWQ clip search walks output rows in batches of 64 (or 256)


class AwqParams(GptqModelParams):
    bits: int_choice(4) = 4  # the AWQ GEMM format GPTQModel writes is 4-bit only
    zero_point: bool = True  # asymmetric groups, as AWQ uses by default


class AwqBackend(GptqModelBackend):
    name = "awq"
    Params = AwqParams
    checkpoint_formats = ("gemm",)

    def codes_params(self, bits: int, group_size: int, symmetric: bool) -> AwqParams:
        if bits != 4:
            raise QuantbenchError(f"awq gives 4-bit codes only (GPTQModel's AWQ GEMM format), got bits={bits}")
        return AwqParams(group_size=group_size, zero_point=not symmetric)

    def layer_codes(self, tensors: dict[str, torch.Tensor], params: AwqParams, layout: str) -> LayerCodes:
        qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
        return LayerCodes(convert_awq(qweight, qzeros, scales, params.group_size), tensors["bias"])

    def gptqmodel_config(self, params: AwqParams) -> object:
        from gptqmodel import AWQConfig

        return AWQConfig(bits=params.bits, group_size=params.group_size, sym=not params.zero_point)

    def check_shapes(self, skeleton: torch.nn.Module, params: AwqParams) -> None:
        super().check_shapes(skeleton, params)
        for name, layer in skeleton.named_modules():
            if isinstance(layer, torch.nn.Linear) and name != "lm_head" and layer.out_features % CLIP_BATCH:
                width = layer.out_features
                raise QuantbenchError(f"AWQ needs out_features divisible by {CLIP_BATCH}: layer {name} has {width}")
