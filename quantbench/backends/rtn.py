"""Round-to-nearest (RTN) group quantization: the project's own quality reference.

Every weight matrix that layer discovery finds (`backends.layers`: nn.Linear, Conv1D, each expert of
fused experts) outside the skip list is quantized with `kernels.format.quantize_rtn` and its
dequantized weights are written back (fake quantization): the model computes exactly what the
packed format would give, at float speed. `weight_bytes` is what the packed format would
occupy: codes at `bits` each, fp16 scales (and fp16 zeros when asymmetric) per group, and every
other weight in its load dtype.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import BeforeValidator, Field, field_validator
from torch import nn

from quantbench import models
from quantbench.backends.base import (
    Backend,
    LayerCodes,
    MethodParams,
    QuantizedModel,
    TorchModel,
    meta_model,
    stored_as,
    weight_bytes,
    weight_count,
)
from quantbench.backends.layers import (
    CONV1D,
    EXPERTS,
    LINEAR,
    WeightMatrices,
    check_group_size,
    rounded_coverage,
    weight_matrices,
)
from quantbench.backends.layout import Layout, grouping
from quantbench.backends.unit_bits import layer_bits_field, layer_bits_validator, parse_layer_bits, unit_bits
from quantbench.corpora import Corpus
from quantbench.kernels.format import dequantize_codes, pack_linear_weight, packed_bytes, quantize_rtn
from quantbench.models import ResolvedModel


def _split_names(value: object) -> object:
    """The CLI gives one string; module names are joined with '+' (',' separates parameters)."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split("+") if name.strip())
    return value


ModuleNames = Annotated[tuple[str, ...], BeforeValidator(_split_names)]


GROUP_SIZE_HELP = (
    "weights sharing one scale along the input dimension; -1 = one group per output row; "
    "must divide every quantized layer's width (576 for the embedded model)"
)


def check_group_size_value(value: int) -> int:
    if value != -1 and (value < 16 or value & (value - 1)):
        raise ValueError(f"must be -1 (per channel) or a power of two ≥ 16, got {value}")
    return value


class RtnParams(MethodParams):
    bits: int = Field(4, ge=2, le=8, description="bits per weight code")
    group_size: int = Field(64, description=GROUP_SIZE_HELP)
    symmetric: bool = Field(False, description="symmetric range around zero, no zero point (false: one per group)")
    skip: ModuleNames = Field(("lm_head",), description="exact module names kept in float, joined with '+'")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = stored_as(
        "compute_dtype", "dtype", "float32", description="dtype the model is loaded in and computes in"
    )
    layer_bits: str = layer_bits_field()

    _group_size = field_validator("group_size")(check_group_size_value)
    _layer_bits = layer_bits_validator(range(2, 9))


def _round(weight: torch.Tensor, bits: int, params: RtnParams) -> torch.Tensor:
    """One (out, in) matrix as the packed format would give it back, in its own dtype."""
    codes, scales, zeros = quantize_rtn(weight.contiguous(), bits, params.group_size, params.symmetric)
    return dequantize_codes(codes, scales, zeros, bits, weight.dtype).T


def _bits_label(params: RtnParams) -> str:
    """The bits the kernel string names: `4`, or `3 (per unit: model.layers.0:8)` with overrides."""
    return f"{params.bits} (per unit: {params.layer_bits})" if params.layer_bits else str(params.bits)


def project_layout(
    method: str, bits: int, group_size: int, symmetric: bool, dtype: str, layer_bits: str = ""
) -> Layout:
    """The project's packed format (kernels/format.py), which rtn prices and triton stores."""
    label = f"{method} {bits}-bit {grouping(group_size)}" + (" symmetric" if symmetric else "")
    if layer_bits:
        label += f" (per unit: {layer_bits})"

    def at_bits(rows: int, cols: int, unit_bits: int) -> int:
        return packed_bytes(rows, cols, unit_bits, group_size, symmetric)

    return Layout(
        method,
        label,
        bits,
        dtype,
        lambda rows, cols: at_bits(rows, cols, bits),
        unit_bits=parse_layer_bits(layer_bits),
        bytes_at_bits=at_bits,
    )


class RtnBackend(Backend):
    name = "rtn"
    library = "torch"
    Params = RtnParams
    headline = ("bits", "group_size")
    layer_kinds = frozenset({LINEAR, CONV1D, EXPERTS})

    def layout(self, params: RtnParams, device: str) -> Layout:
        return project_layout(
            self.name, params.bits, params.group_size, params.symmetric, params.compute_dtype, params.layer_bits
        )

    def quantize(
        self, model: ResolvedModel, params: RtnParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        # Shapes from the meta model first: a group size that does not fit fails before any weight is read.
        skeleton = meta_model(model)
        check_group_size(weight_matrices(skeleton, params.skip).values(), params.group_size)
        unit_bits(weight_matrices(skeleton, params.skip), params.layer_bits, params.bits)  # unknown units, unread
        module, matrices = self.float_model(model, params, device)
        bits = unit_bits(matrices, params.layer_bits, params.bits)
        matrices = {name: m for name, m in matrices.items() if bits[name] is not None}
        count = weight_count(module)
        packed = 0
        fake_bytes = 0
        with torch.no_grad():
            for name, m in matrices.items():
                fake = self.rounded(m, bits[name], params)
                m.replace(fake)
                packed += m.count * packed_bytes(m.rows, m.cols, bits[name], params.group_size, params.symmetric)
                fake_bytes += fake.numel() * fake.element_size()
        size = weight_bytes(module) - fake_bytes + packed
        fmt = f"w{_bits_label(params)} g{params.group_size} {'sym' if params.symmetric else 'asym'}"
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            f"torch {params.compute_dtype} matmul on RTN fake-quant weights ({fmt})",
            weights=count,
            size=size,
            coverage=rounded_coverage(skeleton, matrices),
        )

    def float_model(self, model: ResolvedModel, params: RtnParams, device: str) -> tuple[nn.Module, dict]:
        module = models.load(model, dtype=params.compute_dtype, device=device)
        matrices = weight_matrices(module, params.skip)
        check_group_size(matrices.values(), params.group_size)
        return module, matrices

    def rounded(self, matrices: WeightMatrices, bits: int, params: RtnParams) -> torch.Tensor:
        """The (count, out, in) matrices as the packed format at `bits` would give them back, in their dtype."""
        return torch.stack([_round(w, bits, params) for w in matrices.matrices()])

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
        """Each layer's weight, as loaded, rounded to nearest (`kernels.format.quantize_rtn`) and packed."""
        return {
            name: LayerCodes(
                pack_linear_weight(linear.weight, bits, group_size, symmetric),
                linear.bias.detach().clone() if linear.bias is not None else None,
            )
            for name, linear in layers.items()
        }
