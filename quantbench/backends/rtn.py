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
    MethodParams,
    QuantizedModel,
    TorchModel,
    meta_model,
    weight_bytes,
    weight_count,
)
from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
from quantbench.kernels.format import STORAGE_DTYPE, dequantize_codes, quantize_rtn, resolve_group_size
from quantbench.models import ResolvedModel


def _split_names(value: object) -> object:
    """The CLI gives one string; module names are joined with '+' (',' separates parameters)."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split("+") if name.strip())
    return value


ModuleNames = Annotated[tuple[str, ...], BeforeValidator(_split_names)]


def check_group_size_value(value: int) -> int:
    if value != -1 and (value < 16 or value & (value - 1)):
        raise ValueError(f"must be -1 (per channel) or a power of two ≥ 16, got {value}")
    return value


class RtnParams(MethodParams):
    bits: int = Field(4, ge=2, le=8)
    group_size: int = 64  # -1 = one group per output channel; 64 divides the default model's 576
    symmetric: bool = False  # False: per-group zero point (asymmetric range)
    skip: ModuleNames = ("lm_head",)  # exact module names kept in float, joined with '+'
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # load dtype of the model

    _group_size = field_validator("group_size")(check_group_size_value)


def quantizable_linears(module: nn.Module, skip: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The nn.Linear layers to quantize, by exact module name; unknown skip names are an error
    (a typo would otherwise silently quantize the layer it meant to keep)."""
    linears = {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    unknown = [name for name in skip if name not in linears]
    if unknown:
        raise QuantbenchError(f"skip names no nn.Linear in this model: {', '.join(unknown)}")
    return {name: m for name, m in linears.items() if name not in skip}


def check_group_divides(linears: dict[str, nn.Linear], group_size: int) -> None:
    """One-line QuantbenchError if `group_size` does not split some layer's input width."""
    for name, linear in linears.items():
        if group_size != -1 and linear.in_features % group_size:
            raise QuantbenchError(
                f"group_size {group_size} does not divide in_features {linear.in_features} of layer {name}"
            )


def packed_bytes(n_out: int, k_in: int, bits: int, group_size: int, symmetric: bool) -> int:
    """Bytes of one (n_out, k_in) weight in the packed format: codes + fp16 scales (+ fp16 zeros)."""
    groups = k_in // resolve_group_size(group_size, k_in)
    per_group_values = 1 if symmetric else 2
    return -(-n_out * k_in * bits // 8) + groups * n_out * per_group_values * STORAGE_DTYPE.itemsize


class RtnBackend(Backend):
    name = "rtn"
    library = "torch"
    Params = RtnParams
    headline = ("bits", "group_size")

    def quantize(
        self, model: ResolvedModel, params: RtnParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        # Shapes from the meta model first: a group size that does not fit fails before any weight is read.
        check_group_divides(quantizable_linears(meta_model(model), params.skip), params.group_size)
        module = models.load(model, dtype=params.dtype, device=device)
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
            f"torch {params.dtype} matmul on RTN fake-quant weights ({fmt})",
            weights=count,
            size=size,
            unsavable="fake quantization: the module holds dense dequantized weights, and the packed format "
            "it stands for has no on-disk saver",
        )
