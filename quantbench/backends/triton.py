"""The project's own packed low-bit format and Triton kernels (`quantbench.kernels`).

Every nn.Linear outside the skip list becomes a `QuantLinear`. The codes come from `source`:
round-to-nearest for now; GPTQ/AWQ/HQQ models will feed their codes through converters, so the
kernels can be compared independently of the algorithm that chose the codes. On CUDA the Triton
kernels run; elsewhere the pure-torch reference runs, and `kernel` says so.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from quantbench import models
from quantbench.backends.base import Availability, Backend, MethodParams, QuantizedModel, weight_count
from quantbench.backends.rtn import ModuleNames, check_group_divides, check_group_size_value, quantizable_linears
from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
from quantbench.kernels.format import KERNEL_GROUP_MULTIPLE, PACKABLE_BITS
from quantbench.kernels.quant_linear import QuantLinear
from quantbench.models import ResolvedModel


class TritonParams(MethodParams):
    bits: int = Field(4, ge=2, le=8)  # packable widths only, see the validator
    group_size: int = 64  # -1 = one group per output channel; 64 divides the default model's 576
    symmetric: bool = False
    source: Literal["rtn", "gptq", "awq", "hqq"] = "rtn"  # which method chooses the codes
    skip: ModuleNames = ("lm_head",)  # exact module names kept in float, joined with '+'
    # Dtype of activations and unquantized layers; auto = float16 on CUDA, float32 on CPU.
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"

    _group_size = field_validator("group_size")(check_group_size_value)

    @field_validator("bits")
    @classmethod
    def _packable(cls, value: int) -> int:
        if value not in PACKABLE_BITS:
            raise ValueError(f"the packed format holds {', '.join(map(str, PACKABLE_BITS))} bits, got {value}")
        return value


class TritonBackend(Backend):
    name = "triton"
    library = "triton"
    Params = TritonParams

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

    def quantize(
        self, model: ResolvedModel, params: TritonParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        if params.source != "rtn":
            raise QuantbenchError(
                f"triton: source={params.source} is not yet supported; use source=rtn (the {params.source} "
                "converter waits for that adapter)"
            )
        dtype = params.dtype if params.dtype != "auto" else ("float16" if device == "cuda" else "float32")
        module = models.load(model, dtype=dtype, device=device)
        linears = quantizable_linears(module, params.skip)
        check_group_divides(linears, params.group_size)
        for name, linear in linears.items():
            group = linear.in_features if params.group_size == -1 else params.group_size
            if group % KERNEL_GROUP_MULTIPLE:
                raise QuantbenchError(
                    f"layer {name}: per-channel groups need in_features divisible by {KERNEL_GROUP_MULTIPLE}, "
                    f"got {linear.in_features}"
                )
        count = weight_count(module)
        with torch.no_grad():
            for name, linear in linears.items():
                parent_name, _, child = name.rpartition(".")
                quant = QuantLinear.from_linear(linear, params.bits, params.group_size, params.symmetric)
                setattr(module.get_submodule(parent_name), child, quant)
        return QuantizedModel.measured(module, models.load_tokenizer(model), device, kernel_of(module), weights=count)


def kernel_of(module: nn.Module) -> str:
    """The path the model's QuantLinear layers take (they all share one)."""
    kernels = {m.kernel for m in module.modules() if isinstance(m, QuantLinear)}
    return ", ".join(sorted(kernels)) or "no layer quantized"
