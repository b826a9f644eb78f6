"""torchao through transformers' TorchAoConfig: int8 weight-only, int8 dynamic activations with
int8 weights, or int4 weight-only (IntxWeightOnlyConfig on CPU, the tinygemm Int4 config on CUDA)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from quantbench import models
from quantbench.backends.base import (
    Availability,
    Backend,
    MethodParams,
    QuantizedModel,
    TorchModel,
    check_group_size,
    int_choice,
    meta_model,
    older_than,
    weight_count,
)
from quantbench.backends.layers import measured_coverage
from quantbench.backends.layout import DTYPE_BYTES, Layout, groups_per_row
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel

MIN_TORCH = "2.11"  # older torch: torchao skips loading its C++ ops (torchao/__init__.py)


class TorchaoParams(MethodParams):
    bits: int_choice(4, 8) = Field(8, description="bits per weight code")
    activations: Literal["none", "int8"] = Field(
        "none", description="int8: quantize activations too (dynamic, per token); 8-bit only"
    )
    group_size: int_choice(32, 64, 128, 256) = Field(
        32, description="4-bit only: weights sharing one scale (8-bit scales are per output row)"
    )
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls and of the layers left unquantized"
    )

    @model_validator(mode="after")
    def _options_match_bits(self) -> TorchaoParams:
        if self.bits == 4 and self.activations != "none":
            raise ValueError("activations=int8 needs bits=8 (int4 is weight-only here)")
        if self.bits == 8 and "group_size" in self.model_fields_set:
            raise ValueError("group_size applies to bits=4 only (8-bit scales are per output row)")
        return self


class TorchaoBackend(Backend):
    name = "torchao"
    library = "torchao"
    Params = TorchaoParams
    headline = ("bits",)
    is_serializable = True

    def layout(self, params: TorchaoParams, device: str) -> Layout:
        dtype = params.compute_dtype
        if params.bits == 8:  # Int8WeightOnlyConfig: fp32 scale + int8 zero point per row
            return Layout(self.name, "torchao 8-bit", 8, dtype, lambda rows, cols: rows * cols + rows * (4 + 1))
        group = params.group_size
        if device == "cuda":  # Int4WeightOnlyConfig: codes two per byte, bf16 scale and zero per group
            return Layout(
                self.name,
                f"torchao 4-bit int4 group {group}",
                4,
                dtype,
                lambda rows, cols: -(-rows * cols // 2) + rows * groups_per_row(group, cols) * 2 * 2,
            )
        # IntxWeightOnlyConfig (what quantize picks off CUDA): int8 codes, a dtype scale, an int8 zero
        size = DTYPE_BYTES[dtype]
        return Layout(
            self.name,
            f"torchao 4-bit intx group {group}",
            4,
            dtype,
            lambda rows, cols: rows * cols + rows * groups_per_row(group, cols) * (size + 1),
            dequantizes_weights=True,
        )

    def check(self, device: str) -> Availability:
        base = super().check(device)
        if not base.ok:
            return base
        too_old = older_than("torch", torch.__version__, MIN_TORCH)
        return Availability(not too_old, too_old)

    def quantize(
        self, model: ResolvedModel, params: TorchaoParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        from transformers import TorchAoConfig

        skeleton = meta_model(model)
        if params.bits == 4:
            check_group_size(skeleton, params.group_size)
        config, kernel = _config(params, device)
        module = models.load(
            model,
            dtype=params.compute_dtype,
            device=device,
            quantization_config=TorchAoConfig(config),
            device_map={"": device},
        )
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            kernel,
            weights=weight_count(skeleton),
            coverage=measured_coverage(skeleton, module),
        )


def _config(params: TorchaoParams, device: str) -> tuple[object, str]:
    """The torchao config object for `params` and a description of the linear kernel it runs."""
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup

    if params.bits == 8 and params.activations == "int8":
        return Int8DynamicActivationInt8WeightConfig(), "torchao Int8Tensor dynamic int8 activations, int_scaled_matmul"
    if params.bits == 8:
        return Int8WeightOnlyConfig(), f"torchao Int8Tensor weight-only (int8 cast to {params.compute_dtype} + mm)"
    if device == "cuda":
        return Int4WeightOnlyConfig(group_size=params.group_size), "torchao Int4Tensor weight-only (CUDA)"
    # The default Int4WeightOnlyConfig needs the CUDA-only mslk kernels; this one stores the int4
    # codes unpacked in int8 and dequantizes before the matmul: no smaller than int8 weight-only.
    config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(params.group_size))
    return (
        config,
        f"torchao IntxUnpackedToInt8Tensor (int4 in int8 bytes, dequantize + {params.compute_dtype} mm)",
    )
