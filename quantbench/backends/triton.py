"""The project's own packed low-bit format and Triton kernels (`quantbench.kernels`).

Every nn.Linear outside the skip list becomes a `QuantLinear`. The codes come from `source`, so
the kernels can be compared independently of the algorithm that chose the codes:

- rtn: round-to-nearest of the float weights (`kernels.format.quantize_rtn`);
- hqq: each layer quantized by the `hqq` library (HQQLinear, axis=1, the layers' compute dtype
  is `dtype`), then converted (`kernels.hqq`);
- gptq / awq: the model quantized and saved by GPTQModel exactly as the gptq/awq adapters do
  (`GptqModelBackend.save_checkpoint`, with their default calibration), then each layer's
  qweight/qzeros/scales read from the checkpoint and converted (`kernels.gptq`, `kernels.awq`).

Layers outside the skip list keep the float weights of the model loaded in `dtype`. On CUDA the
Triton kernels run; elsewhere the pure-torch reference runs, and `kernel` says so, with the source.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
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
    weight_count,
)
from quantbench.backends.rtn import ModuleNames, check_group_divides, check_group_size_value, quantizable_linears
from quantbench.corpora import Corpus
from quantbench.engines.torch_model import reloads_differently
from quantbench.errors import QuantbenchError
from quantbench.kernels.format import KERNEL_GROUP_MULTIPLE, PACKABLE_BITS, pack_multiple
from quantbench.kernels.quant_linear import QuantLinear
from quantbench.models import ResolvedModel


class TritonParams(MethodParams):
    bits: int = Field(4, ge=2, le=8)  # packable widths only, see the validator
    group_size: int = 64  # -1 = one group per output channel; 64 divides the default model's 576
    symmetric: bool = False  # rtn; gptq's sym; awq without zero point; hqq is always asymmetric
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
        dtype = params.dtype if params.dtype != "auto" else ("float16" if device == "cuda" else "float32")
        # Shapes from the meta model first: a layout that does not fit fails before any weight is read.
        skeleton = quantizable_linears(meta_model(model), params.skip)
        check_group_divides(skeleton, params.group_size)
        for name, linear in skeleton.items():
            group = linear.in_features if params.group_size == -1 else params.group_size
            if group % KERNEL_GROUP_MULTIPLE:
                raise QuantbenchError(
                    f"layer {name}: per-channel groups need in_features divisible by {KERNEL_GROUP_MULTIPLE}, "
                    f"got {linear.in_features}"
                )
            if linear.in_features % pack_multiple(params.bits):
                raise QuantbenchError(
                    f"layer {name}: {params.bits}-bit packing needs in_features divisible by "
                    f"{pack_multiple(params.bits)}, got {linear.in_features}"
                )
        module = models.load(model, dtype=dtype, device=device)
        linears = quantizable_linears(module, params.skip)
        count = weight_count(module)
        with torch.no_grad():
            if params.source in ("gptq", "awq"):
                layers = gptqmodel_layers(model, params, linears, device, calibration)
            elif params.source == "hqq":
                layers = {name: hqq_layer(linear, params, dtype, device) for name, linear in linears.items()}
            else:
                layers = {
                    name: QuantLinear.from_linear(linear, params.bits, params.group_size, params.symmetric)
                    for name, linear in linears.items()
                }
            for name, layer in layers.items():
                parent_name, _, child = name.rpartition(".")
                setattr(module.get_submodule(parent_name), child, layer.to(device))
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            kernel_of(module),
            weights=count,
            unsavable=reloads_differently("quantbench"),
        )


def hqq_layer(linear: nn.Linear, params: TritonParams, dtype: str, device: str) -> QuantLinear:
    """`linear` quantized by hqq (its defaults, as the hqq adapter uses them) and converted."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    group = None if params.group_size == -1 else params.group_size  # hqq: None = the whole input row
    config = BaseQuantizeConfig(nbits=params.bits, group_size=group, axis=1)
    quantized = HQQLinear(linear, config, compute_dtype=models.DTYPES[dtype], device=device, del_orig=False)
    return QuantLinear.from_hqq(quantized)


def gptqmodel_layers(
    model: ResolvedModel, params: TritonParams, linears: dict[str, nn.Linear], device: str, calibration: Corpus | None
) -> dict[str, QuantLinear]:
    """Quantize with GPTQModel as the gptq/awq adapter would, and convert each layer of the saved checkpoint."""
    from quantbench.backends.awq import AwqBackend, AwqParams
    from quantbench.backends.gptq import GptqBackend, GptqParams

    if params.source == "gptq":
        method = GptqParams(bits=params.bits, group_size=params.group_size, sym=params.symmetric)
        backend = GptqBackend()
    else:
        method = AwqParams(group_size=params.group_size, zero_point=not params.symmetric)  # bits=4: validated
        backend = AwqBackend()
    availability = backend.check(device)
    if not availability.ok:
        raise QuantbenchError(f"triton: source={params.source} needs {backend.name}: {availability.reason}")
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="quantbench-triton-") as tmp:
        backend.save_checkpoint(model, method, tmp, calibration)
        config = json.loads((Path(tmp) / "quantize_config.json").read_text())
        tensors = {key: t for shard in sorted(Path(tmp).glob("*.safetensors")) for key, t in load_file(shard).items()}
    layout = config.get("checkpoint_format") or config.get("format")
    expected = ("gptq", "gptq_v2") if params.source == "gptq" else ("gemm",)
    if layout not in expected:
        raise QuantbenchError(
            f"triton: GPTQModel saved a {layout!r} checkpoint; the {params.source} converter reads {expected}"
        )
    layers = {}
    for name in linears:
        found = {key: tensors.get(f"{name}.{key}") for key in ("qweight", "qzeros", "scales", "g_idx", "bias")}
        if found["qweight"] is None:
            raise QuantbenchError(f"triton: {params.source} left layer {name} unquantized; add it to skip")
        qweight, qzeros, scales, g_idx, bias = found.values()
        if params.source == "gptq":
            layers[name] = QuantLinear.from_gptq(qweight, qzeros, scales, params.bits, g_idx, bias, layout == "gptq")
        else:
            layers[name] = QuantLinear.from_awq(qweight, qzeros, scales, params.group_size, bias)
    return layers


def kernel_of(module: nn.Module) -> str:
    """The path the model's QuantLinear layers take (they all share one)."""
    kernels = {m.kernel for m in module.modules() if isinstance(m, QuantLinear)}
    return ", ".join(sorted(kernels)) or "no layer quantized"
