"""HQQ (half-quadratic quantization, no calibration) through the `hqq` library itself:
transformers' HqqConfig cannot quantize in 5.2x (no quantize ops, and a CPU device map is rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt, field_validator
from torch import nn

from quantbench import models
from quantbench.backends.base import (
    Backend,
    LayerCodes,
    MethodParams,
    QuantizedModel,
    check_group_size,
    int_choice,
    meta_model,
    weight_count,
)
from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
from quantbench.kernels.hqq import convert_hqq
from quantbench.models import ResolvedModel


class HqqParams(MethodParams):
    nbits: int_choice(1, 2, 3, 4, 5, 6, 8) = 4  # hqq 0.2 stores 5 and 6 bits in whole bytes
    group_size: PositiveInt = 64
    axis: int_choice(0, 1) = 1  # 1: groups run along the input dimension (what fused kernels expect)
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"

    @field_validator("group_size")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("hqq needs a multiple of 8")
        return value


class HqqBackend(Backend):
    name = "hqq"
    library = "hqq"
    Params = HqqParams
    headline = ("nbits", "group_size")
    # hqq quantizes the module in place: save_pretrained writes no quantization_config, and the
    # file reloads as a different model (hqq's own AutoHQQHFModel.save_quantized is another format).
    is_serializable = False

    def quantize(
        self, model: ResolvedModel, params: HqqParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
        from hqq.models.hf.base import AutoHQQHFModel

        check_group_size(meta_model(model), params.group_size)
        module = models.load(model, dtype=params.compute_dtype, device=device)
        count = weight_count(module)
        config = BaseQuantizeConfig(nbits=params.nbits, group_size=params.group_size, axis=params.axis)
        AutoHQQHFModel.quantize_model(
            module, quant_config=config, compute_dtype=models.DTYPES[params.compute_dtype], device=device
        )
        layer = next(m for m in module.modules() if isinstance(m, HQQLinear))
        path = f"{layer.meta['packing']} unpack + dequantize + {params.compute_dtype} matmul"
        return QuantizedModel.measured(
            module, models.load_tokenizer(model), device, f"hqq {layer.backend.name} backend ({path})", weights=count
        )

    def codes(
        self,
        model: ResolvedModel,
        layers: dict[str, nn.Linear],
        *,
        bits: int,
        group_size: int,
        symmetric: bool,
        device: str,
        calibration: Corpus | None = None,
    ) -> dict[str, LayerCodes]:
        """Each layer quantized by hqq with its defaults and axis=1 (groups along the inputs, the only
        grouping the packed format holds), computing in the layer's dtype, and converted (`kernels.hqq`)."""
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        if symmetric:
            raise QuantbenchError("hqq is always asymmetric (float zero points); it has no symmetric codes")
        group = None if group_size == -1 else group_size  # hqq: None = the whole input row
        config = BaseQuantizeConfig(nbits=bits, group_size=group, axis=1)
        codes = {}
        for name, linear in layers.items():
            quantized = HQQLinear(linear, config, compute_dtype=linear.weight.dtype, device=device, del_orig=False)
            bias = quantized.bias.detach().clone() if quantized.bias is not None else None
            codes[name] = LayerCodes(convert_hqq(quantized), bias)
        return codes
