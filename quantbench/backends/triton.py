"""The project's own packed low-bit format and Triton kernels (`quantbench.kernels`).

Every nn.Linear and Conv1D that layer discovery finds (`backends.layers`) outside the skip list
becomes a `QuantLinear`, and every fused MoE experts module a `QuantExperts`, which holds one
QuantLinear per expert and projection and runs each expert's rows through it. The codes come
from the `source` method's `codes` hook (the adapter contract, one call per matrix, each expert's
its own), so the kernels can be compared independently of the algorithm that chose the codes:

- rtn: round-to-nearest of the float weights (`kernels.format.quantize_rtn`);
- hqq: each layer quantized by the `hqq` library (HQQLinear, axis=1, the layers' compute dtype
  is `dtype`), then converted (`kernels.hqq`);
- gptq / awq: the model quantized and saved by GPTQModel exactly as the gptq/awq adapters do
  (with their default calibration), then each layer's qweight/qzeros/scales read from the
  checkpoint and converted (`kernels.gptq`, `kernels.awq`). GPTQModel stores fused experts as
  per-expert layers of its own, which the converters do not read, so these sources refuse MoE
  models unless their experts are skipped.

Layers outside the skip list keep the float weights of the model loaded in `dtype`. On CUDA the
Triton kernels run; elsewhere the pure-torch reference runs, and `kernel` says so, with the source.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from quantbench import models
from quantbench.backends.base import (
    Availability,
    Backend,
    MethodParams,
    QuantizedModel,
    TorchModel,
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
from quantbench.backends.layout import Layout
from quantbench.backends.registry import get_backend
from quantbench.backends.rtn import (
    GROUP_SIZE_HELP,
    ModuleNames,
    check_group_size_value,
    project_layout,
)
from quantbench.backends.unit_bits import layer_bits_field, layer_bits_validator, unit_bits
from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
from quantbench.kernels.format import KERNEL_GROUP_MULTIPLE, PACKABLE_BITS, pack_multiple
from quantbench.kernels.quant_experts import QuantExperts
from quantbench.kernels.quant_linear import QuantLinear
from quantbench.models import ResolvedModel


class TritonParams(MethodParams):
    bits: int = Field(4, ge=2, le=8, description="bits per weight code (the packed format holds 2, 3, 4 or 8)")
    group_size: int = Field(64, description=GROUP_SIZE_HELP)
    symmetric: bool = Field(
        False, description="symmetric range around zero, no zero point (rtn; gptq's sym; awq without zero point)"
    )
    source: Literal["rtn", "gptq", "awq", "hqq"] = Field(
        "rtn", description="which method chooses the codes that the packed format stores"
    )
    skip: ModuleNames = Field(("lm_head",), description="exact module names kept in float, joined with '+'")
    compute_dtype: Literal["auto", "float16", "bfloat16", "float32"] = stored_as(
        "compute_dtype",
        "dtype",
        "auto",
        description="dtype of activations and unquantized layers; auto = float16 on CUDA, float32 on CPU",
    )

    layer_bits: str = layer_bits_field()

    _group_size = field_validator("group_size")(check_group_size_value)
    _layer_bits = layer_bits_validator(PACKABLE_BITS)

    @field_validator("bits")
    @classmethod
    def _packable(cls, value: int) -> int:
        if value not in PACKABLE_BITS:
            raise ValueError(f"the packed format holds {', '.join(map(str, PACKABLE_BITS))} bits, got {value}")
        return value

    @model_validator(mode="after")
    def _source_takes_the_format(self) -> TritonParams:
        if self.source == "awq" and self.bits != 4:
            raise ValueError(f"source=awq is 4-bit only (GPTQModel's AWQ GEMM format), got bits={self.bits}")
        if self.source == "hqq" and self.symmetric:
            raise ValueError("source=hqq is always asymmetric (float zero points); drop symmetric=true")
        return self


class TritonBackend(Backend):
    name = "triton"
    library = "triton"
    Params = TritonParams
    headline = ("bits", "group_size", "source")
    layer_kinds = frozenset({LINEAR, CONV1D, EXPERTS})

    def refusal(self, model: ResolvedModel, params: TritonParams, device: str) -> str:
        """Also: a 3-D weight that is no transformers experts module (no per-expert forward to run it
        in), and fused experts under a source whose codes are not read per expert (gptq, awq)."""
        reason = super().refusal(model, params, device)
        if reason:
            return reason
        skeleton = meta_model(model)
        for m in weight_matrices(skeleton, params.skip).values():
            if m.kind != EXPERTS:
                continue
            where = f"{type(skeleton).__name__}'s {m.layer_type} {m.name}"
            if not hasattr(m.module, "has_gate"):
                return f"triton cannot pack {where}: a 3-D weight outside transformers' experts interface (skip it)"
            if params.source in ("gptq", "awq"):
                return (
                    f"triton source={params.source} cannot pack {where}: GPTQModel saves fused experts as "
                    f"per-expert layers the converter does not read (use source=rtn or hqq, or skip them)"
                )
        return ""

    def layout(self, params: TritonParams, device: str) -> Layout:
        dtype = compute_dtype(params, device)
        return project_layout(self.name, params.bits, params.group_size, params.symmetric, dtype, params.layer_bits)

    def check(self, device: str) -> Availability:
        if device not in self.devices:
            return super().check(device)
        installed = importlib.util.find_spec("triton") is not None
        if device == "cuda":
            if not torch.cuda.is_available():
                return Availability(False, "no CUDA device visible to torch")
            if not installed:
                return Availability(False, "triton is not installed (pip install triton)")
            return Availability(True)
        note = "" if installed else "; triton is not installed (pip install triton)"
        return Availability(True, f"no CUDA on cpu: the pure-torch reference path runs, not the Triton kernels{note}")

    def calibration_corpus(self, params: TritonParams) -> str | None:
        """The corpus the source method calibrates on at its defaults (gptq, awq), or None."""
        source = get_backend(params.source)
        return source.calibration_corpus(source.Params())

    def quantize(
        self, model: ResolvedModel, params: TritonParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        dtype = compute_dtype(params, device)
        # Shapes from the meta model first: a layout that does not fit fails before any weight is read.
        meta = meta_model(model)
        skeleton = weight_matrices(meta, params.skip)
        check_group_size(skeleton.values(), params.group_size)
        bits = unit_bits(skeleton, params.layer_bits, params.bits)
        for name, m in skeleton.items():
            if bits[name] is None:
                continue
            group = m.cols if params.group_size == -1 else params.group_size
            if group % KERNEL_GROUP_MULTIPLE:
                raise QuantbenchError(
                    f"layer {name}: per-channel groups need in_features divisible by {KERNEL_GROUP_MULTIPLE}, "
                    f"got {m.cols}"
                )
            if m.cols % pack_multiple(bits[name]):
                raise QuantbenchError(
                    f"layer {name}: {bits[name]}-bit packing needs in_features divisible by "
                    f"{pack_multiple(bits[name])}, got {m.cols}"
                )
        source = get_backend(params.source)
        availability = source.check(device)
        if not availability.ok:
            raise QuantbenchError(f"triton: source={params.source} needs {source.name}: {availability.reason}")
        module = models.load(model, dtype=dtype, device=device)
        matrices = weight_matrices(module, params.skip)
        linears = {key: m.linear(index) for m in matrices.values() for index, key in enumerate(_keys(m))}
        count = weight_count(module)
        codes = {}
        with torch.no_grad():
            # One call per bit width: a calibrated source (gptq, awq) quantizes each group in one pass.
            for width in sorted({b for b in bits.values() if b is not None}):
                codes |= source.codes(
                    model,
                    {key: linears[key] for m in matrices.values() if bits[m.name] == width for key in _keys(m)},
                    bits=width,
                    group_size=params.group_size,
                    symmetric=params.symmetric,
                    device=device,
                    calibration=calibration,
                )
            layers = {
                key: QuantLinear(c.weight, c.bias, c.in_perm, source=params.source).to(device)
                for key, c in codes.items()
            }
            experts: dict[str, dict[str, list[QuantLinear]]] = {}
            for m in matrices.values():
                if bits[m.name] is None:
                    continue
                if m.kind == EXPERTS:
                    experts.setdefault(m.module_name, {})[m.attribute] = [layers[key] for key in _keys(m)]
                else:
                    _set_submodule(module, m.module_name, layers[m.name])
            for name, projections in experts.items():
                _set_submodule(module, name, QuantExperts(module.get_submodule(name), projections))
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            kernel_of(module),
            weights=count,
            coverage=measured_coverage(meta, module),
        )

    def unit_map_refusal(self, params: TritonParams) -> str:
        if params.source == "rtn":
            return ""
        return (
            f"triton with source={params.source} cannot be mapped unit by unit: its codes come from "
            f"{params.source}'s whole-model pass; map {params.source} itself, or triton with source=rtn"
        )

    def float_model(self, model: ResolvedModel, params: TritonParams, device: str) -> tuple[nn.Module, dict]:
        if params.source != "rtn":
            raise QuantbenchError(self.unit_map_refusal(params))
        module = models.load(model, dtype=compute_dtype(params, device), device=device)
        matrices = weight_matrices(module, params.skip)
        check_group_size(matrices.values(), params.group_size)
        return module, matrices

    def rounded(self, matrices: WeightMatrices, bits: int, params: TritonParams) -> torch.Tensor:
        """What the packed codes of source=rtn dequantize to (the reference path computes with exactly these)."""
        rtn = get_backend("rtn")
        return rtn.rounded(
            matrices, bits, rtn.Params(bits=bits, group_size=params.group_size, symmetric=params.symmetric)
        )


def _keys(m: WeightMatrices) -> list[str]:
    """The names `Backend.codes` knows `m`'s matrices by: its own, or one per expert (`name.index`)."""
    return [f"{m.name}.{index}" for index in range(m.count)] if m.kind == EXPERTS else [m.name]


def _set_submodule(module: nn.Module, name: str, replacement: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent), child, replacement)


def compute_dtype(params: TritonParams, device: str) -> str:
    if params.compute_dtype != "auto":
        return params.compute_dtype
    return "float16" if device == "cuda" else "float32"


def kernel_of(module: nn.Module) -> str:
    """The path the model's QuantLinear layers take (they all share one)."""
    kernels = {m.kernel for m in module.modules() if isinstance(m, QuantLinear)}
    return ", ".join(sorted(kernels)) or "no layer quantized"
