"""HQQ (half-quadratic quantization, no calibration) through the `hqq` library itself:
transformers' HqqConfig cannot quantize in 5.2x (no quantize ops, and a CPU device map is rejected).
Each linear and Conv1D layer that layer discovery finds (`backends.layers`) becomes an HQQLinear, as
hqq's AutoHQQHFModel.quantize_model does for nn.Linear (which fails on models without `model.layers`,
such as GPT-2); fused MoE experts stay in float, hqq having no layer for them."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, field_validator
from torch import nn

from quantbench import models
from quantbench.backends.base import (
    Backend,
    LayerCodes,
    MethodParams,
    QuantizedModel,
    TorchModel,
    int_choice,
    meta_model,
    stored_as,
    weight_count,
)
from quantbench.backends.layers import (
    CONV1D,
    EXPERTS,
    LINEAR,
    WeightMatrices,
    check_group_size,
    measured_coverage,
    weight_matrices,
)
from quantbench.backends.layout import DTYPE_BYTES, Layout, groups_per_row
from quantbench.backends.unit_bits import layer_bits_field, layer_bits_validator, parse_layer_bits, unit_bits
from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
from quantbench.kernels.hqq import convert_hqq
from quantbench.models import ResolvedModel

HQQ_BITS = (1, 2, 3, 4, 5, 6, 8)


class HqqParams(MethodParams):
    bits: int_choice(*HQQ_BITS) = stored_as(
        "bits", "nbits", 4, description="bits per weight code (hqq 0.2 stores 5 and 6 bits in whole bytes)"
    )
    group_size: PositiveInt = Field(64, description="weights sharing one scale and zero; a multiple of 8")
    axis: int_choice(0, 1) = Field(1, description="1: groups run along the input dimension (what fused kernels expect)")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls and of the layers left unquantized"
    )
    layer_bits: str = layer_bits_field()

    _layer_bits = layer_bits_validator(HQQ_BITS)

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
    # hqq quantizes the module in place: save_pretrained writes no quantization_config, and the
    # file reloads as a different model (hqq's own AutoHQQHFModel.save_quantized is another format).
    is_serializable = False
    layer_kinds = frozenset({LINEAR, CONV1D})

    def layout(self, params: HqqParams, device: str) -> Layout:
        return Layout(
            self.name,
            f"hqq {params.bits}-bit group {params.group_size}"
            + (f" (per unit: {params.layer_bits})" if params.layer_bits else ""),
            params.bits,
            params.compute_dtype,
            lambda rows, cols: _linear_bytes(rows, cols, params),
            dequantizes_weights=True,
            unit_bits=parse_layer_bits(params.layer_bits),
            bytes_at_bits=lambda rows, cols, bits: _linear_bytes(rows, cols, params.model_copy(update={"bits": bits})),
        )

    def quantize(
        self, model: ResolvedModel, params: HqqParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        from hqq.core.quantize import HQQLinear

        skeleton = meta_model(model)
        unit_bits(_layers(skeleton), params.layer_bits, params.bits)  # unknown units fail before any read
        module, layers = self.float_model(model, params, device)
        count = weight_count(module)
        bits = unit_bits(layers, params.layer_bits, params.bits)
        dtype = models.DTYPES[params.compute_dtype]
        for name, m in layers.items():
            if bits[name] is None:
                continue
            parent, _, child = name.rpartition(".")
            quantized = HQQLinear(m.linear(), _config(bits[name], params), compute_dtype=dtype, device=device)
            setattr(module.get_submodule(parent), child, quantized)
        layer = next(m for m in module.modules() if isinstance(m, HQQLinear))
        path = f"{layer.meta['packing']} unpack + dequantize + {params.compute_dtype} matmul"
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            f"hqq {layer.backend.name} backend ({path})",
            weights=count,
            coverage=measured_coverage(skeleton, module),
        )

    def float_model(self, model: ResolvedModel, params: HqqParams, device: str) -> tuple[nn.Module, dict]:
        check_group_size(_layers(meta_model(model)).values(), params.group_size)
        module = models.load(model, dtype=params.compute_dtype, device=device)
        module.requires_grad_(False)
        dtype = models.DTYPES[params.compute_dtype]
        # As hqq's quantize_model: every other leaf module goes to the compute dtype too, the rotary
        # embedding's fp32 inv_freq included, which the logits depend on.
        for leaf in module.modules():
            if not isinstance(leaf, nn.Linear) and next(leaf.children(), None) is None:
                leaf.to(device=device, dtype=dtype)
        return module, _layers(module)

    def rounded(self, matrices: WeightMatrices, bits: int, params: HqqParams) -> torch.Tensor:
        """What HQQLinear's forward multiplies by: its dequantized weight (hqq's pytorch backend)."""
        from hqq.core.quantize import HQQLinear

        linear = matrices.linear()
        dtype = models.DTYPES[params.compute_dtype]
        device = str(linear.weight.device)
        quantized = HQQLinear(linear, _config(bits, params), compute_dtype=dtype, device=device, del_orig=False)
        return quantized.dequantize().reshape(matrices.rows, matrices.cols)[None]

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


def _config(bits: int, params: HqqParams) -> dict:
    from hqq.core.quantize import BaseQuantizeConfig

    return BaseQuantizeConfig(nbits=bits, group_size=params.group_size, axis=params.axis)


def _layers(module: nn.Module) -> dict:
    """The layers hqq quantizes: linear and Conv1D (fused experts have no HQQLinear)."""
    return {name: m for name, m in weight_matrices(module).items() if m.kind != EXPERTS}


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
