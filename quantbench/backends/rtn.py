"""Round-to-nearest (RTN) group quantization: the project's own quality reference.

Every nn.Linear outside the skip list is quantized with `kernels.format.quantize_rtn` and its
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
    check_group_size,
    meta_model,
    stored_as,
    weight_bytes,
    weight_count,
)
from quantbench.backends.layout import Layout, grouping
from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
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

    _group_size = field_validator("group_size")(check_group_size_value)


def quantizable_linears(module: nn.Module, skip: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The nn.Linear layers to quantize, by exact module name; unknown skip names are an error
    (a typo would otherwise silently quantize the layer it meant to keep)."""
    linears = {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    unknown = [name for name in skip if name not in linears]
    if unknown:
        raise QuantbenchError(f"skip names no nn.Linear in this model: {', '.join(unknown)}")
    return {name: m for name, m in linears.items() if name not in skip}


def project_layout(method: str, bits: int, group_size: int, symmetric: bool, dtype: str) -> Layout:
    """The project's packed format (kernels/format.py), which rtn prices and triton stores."""
    label = f"{method} {bits}-bit {grouping(group_size)}" + (" symmetric" if symmetric else "")
    return Layout(method, label, bits, dtype, lambda rows, cols: packed_bytes(rows, cols, bits, group_size, symmetric))


class RtnBackend(Backend):
    name = "rtn"
    library = "torch"
    Params = RtnParams
    headline = ("bits", "group_size")

    def layout(self, params: RtnParams, device: str) -> Layout:
        return project_layout(self.name, params.bits, params.group_size, params.symmetric, params.compute_dtype)

    def quantize(
        self, model: ResolvedModel, params: RtnParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        # Shapes from the meta model first: a group size that does not fit fails before any weight is read.
        skeleton = meta_model(model)
        quantizable_linears(skeleton, params.skip)  # unknown skip names
        check_group_size(skeleton, params.group_size, params.skip)
        module = models.load(model, dtype=params.compute_dtype, device=device)
        linears = quantizable_linears(module, params.skip)
        count = weight_count(module)
        packed = 0
        fake_bytes = 0
        with torch.no_grad():
            for linear in linears.values():
                w = linear.weight
                codes, scales, zeros = quantize_rtn(w, params.bits, params.group_size, params.symmetric)
                fake = dequantize_codes(codes, scales, zeros, params.bits, w.dtype).T.contiguous()
                # A new Parameter rather than an in-place copy: a weight tied to the embedding
                # must not quantize the embedding with it.
                linear.weight = nn.Parameter(fake, requires_grad=False)
                packed += packed_bytes(*w.shape, params.bits, params.group_size, params.symmetric)
                fake_bytes += fake.numel() * fake.element_size()
        size = weight_bytes(module) - fake_bytes + packed
        fmt = f"w{params.bits} g{params.group_size} {'sym' if params.symmetric else 'asym'}"
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            f"torch {params.compute_dtype} matmul on RTN fake-quant weights ({fmt})",
            weights=count,
            size=size,
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
        """Each layer's weight, as loaded, rounded to nearest (`kernels.format.quantize_rtn`) and packed."""
        return {
            name: LayerCodes(
                pack_linear_weight(linear.weight, bits, group_size, symmetric),
                linear.bias.detach().clone() if linear.bias is not None else None,
            )
            for name, linear in layers.items()
        }
