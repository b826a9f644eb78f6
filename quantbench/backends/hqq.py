"""HQQ (half-quadratic quantization, no calibration) through the `hqq` library itself:
transformers' HqqConfig cannot quantize in 5.2x (no quantize ops, and a CPU device map is rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from quantbench import models
from quantbench.backends.base import (
    Backend,
    MethodParams,
    QuantizedModel,
    check_group_size,
    int_choice,
    meta_model,
    stored_as,
    weight_count,
)
from quantbench.backends.layout import DTYPE_BYTES, Layout, groups_per_row
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel


class HqqParams(MethodParams):
    bits: int_choice(1, 2, 3, 4, 5, 6, 8) = stored_as(
        "bits", "nbits", 4, description="bits per weight code (hqq 0.2 stores 5 and 6 bits in whole bytes)"
    )
    group_size: PositiveInt = Field(64, description="weights sharing one scale and zero; a multiple of 8")
    axis: int_choice(0, 1) = Field(1, description="1: groups run along the input dimension (what fused kernels expect)")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls and of the layers left unquantized"
    )

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
    headline = ("bits", "group_size")
    is_serializable = True  # AutoHQQHFModel.save_quantized / from_quantized

    def layout(self, params: HqqParams, device: str) -> Layout:
        return Layout(
            self.name,
            f"hqq {params.bits}-bit group {params.group_size}",
            params.bits,
            params.compute_dtype,
            lambda rows, cols: _linear_bytes(rows, cols, params),
            dequantizes_weights=True,
        )

    def quantize(
        self, model: ResolvedModel, params: HqqParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
        from hqq.models.hf.base import AutoHQQHFModel

        check_group_size(meta_model(model), params.group_size)
        module = models.load(model, dtype=params.compute_dtype, device=device)
        count = weight_count(module)
        config = BaseQuantizeConfig(nbits=params.bits, group_size=params.group_size, axis=params.axis)
        AutoHQQHFModel.quantize_model(
            module, quant_config=config, compute_dtype=models.DTYPES[params.compute_dtype], device=device
        )
        layer = next(m for m in module.modules() if isinstance(m, HQQLinear))
        path = f"{layer.meta['packing']} unpack + dequantize + {params.compute_dtype} matmul"
        return QuantizedModel.measured(
            module, models.load_tokenizer(model), device, f"hqq {layer.backend.name} backend ({path})", weights=count
        )


def _linear_bytes(rows: int, cols: int, params: HqqParams) -> int:
    """hqq views the weight as (n/g, g) and packs along the first axis: 8/bits groups per uint8
    row, 10 per int32 row at 3 bits, one uint8 per code at 5 and 6 bits (hqq 0.2 has no packing
    for them); a scale and a zero per group in the compute dtype."""
    groups = rows * groups_per_row(params.group_size, cols)
    g = params.group_size
    if params.bits == 3:
        codes = -(-groups // 10) * g * 4
    elif params.bits in (5, 6):
        codes = groups * g
    else:
        codes = -(-groups * params.bits // 8) * g
    return codes + groups * 2 * DTYPE_BYTES[params.compute_dtype]
