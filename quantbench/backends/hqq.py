"""HQQ (half-quadratic quantization, no calibration) through the `hqq` library itself:
transformers' HqqConfig cannot quantize in 5.2x (no quantize ops, and a CPU device map is rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt, field_validator

from quantbench import models
from quantbench.backends.base import (
    Backend,
    MethodParams,
    QuantizedModel,
    TorchModel,
    check_group_size,
    int_choice,
    meta_model,
    weight_count,
)
from quantbench.corpora import Corpus
from quantbench.engines.torch_model import reloads_differently
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
    is_serializable = True  # AutoHQQHFModel.save_quantized / from_quantized

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
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            f"hqq {layer.backend.name} backend ({path})",
            weights=count,
            unsavable=reloads_differently("hqq"),
        )
