"""PyTorch's own dynamic int8 quantization, `torch.ao.quantization.quantize_dynamic`: the example
most quantization tutorials start from. Each nn.Linear outside the skip list becomes a
`torch.ao.nn.quantized.dynamic.Linear`: int8 weights packed for the chosen engine, activations
quantized per call from their observed range, int32 accumulation, float output. Deprecated upstream
(torchao's `quantize_` replaces it) but still shipped, and still what many readers try first.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field
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
from quantbench.backends.layers import LINEAR, measured_coverage, weight_matrices
from quantbench.backends.layout import Layout
from quantbench.backends.rtn import ModuleNames
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel

# A quantized tensor's parameters as torch keeps them: a float64 scale and an int64 zero point,
# one pair per tensor or per output row.
QPARAM_BYTES = 8 + 8
# Every dynamic Linear also holds an output scale (float32) and zero point (int64) as buffers,
# unused by the dynamic kernel but saved with the module.
OUTPUT_QPARAM_BYTES = 4 + 8

KERNELS = {
    # The module always asks for reduce_range; fbgemm honours it, qnnpack ignores it.
    "x86": "torch quantized::linear_dynamic, x86 engine (fbgemm): int8 weights, activations in 7 bits per call",
    "qnnpack": "torch quantized::linear_dynamic, qnnpack engine: int8 weights, activations in 8 bits per call",
}


class DynamicParams(MethodParams):
    engine: Literal["x86", "qnnpack"] = Field(
        "x86",
        description="torch quantized engine that packs the weights and runs the matmul: x86 (fbgemm, "
        "activations reduced to 7 bits against overflow) or qnnpack (8-bit activations)",
    )
    per_channel: bool = Field(False, description="one weight scale per output row (false: one per tensor)")
    skip: ModuleNames = Field(
        ("lm_head",),
        description="exact module names kept in float, joined with '+'; empty (skip=) quantizes the output "
        "head too, as upstream's example does",
    )

    @property
    def bits(self) -> int:
        """Bits per weight code."""
        return 8


class DynamicBackend(Backend):
    name = "dynamic"
    library = "torch"
    min_version = "2.0"  # the x86 engine
    Params = DynamicParams
    devices = ("cpu",)  # the quantized engines are CPU kernels
    headline = ("engine",)
    # save_pretrained fails: the state_dict holds the packed weights in a tuple beside a torch.dtype,
    # where transformers expects tensors.
    is_serializable = False
    note = "torch.ao.quantization is deprecated upstream (use torchao)"

    def layout(self, params: DynamicParams, device: str) -> Layout:
        # qnnpack packs a float32 bias of zeros for a layer that has none (as the linears of most
        # decoders); a real bias is priced by the planner apart.
        zero_bias = 4 if params.engine == "qnnpack" else 0

        def linear_bytes(rows: int, cols: int) -> int:
            qparams = QPARAM_BYTES * (rows if params.per_channel else 1)
            return rows * cols + qparams + OUTPUT_QPARAM_BYTES + zero_bias * rows

        return Layout(self.name, f"dynamic int8 {granularity(params)} ({params.engine})", 8, "float32", linear_bytes)

    def quantize(
        self, model: ResolvedModel, params: DynamicParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        # Imported here, not at the top: `quantbench methods` imports every adapter, and torch.ao warns.
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        module = models.load(model, dtype="float32", device=device)
        count = weight_count(module)
        qconfig = per_channel_dynamic_qconfig if params.per_channel else default_dynamic_qconfig
        names = [name for name, m in weight_matrices(module, params.skip).items() if m.kind == LINEAR]
        with quantized_engine(params.engine), warnings.catch_warnings():
            # The deprecation is the method's `note`; repeating it in every trial's log says nothing new.
            warnings.filterwarnings("ignore", message=r"(?s).*deprecated")
            quantize_dynamic(module, {name: qconfig for name in names}, dtype=torch.qint8, inplace=True)
        packed = sum(packed_bytes(layer) for layer in module.modules() if isinstance(layer, DynamicLinear))
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            f"{KERNELS[params.engine]} (weight scales {granularity(params)})",
            weights=count,
            size=weight_bytes(module) + packed,
            coverage=measured_coverage(meta_model(model), module),
        )


def granularity(params: DynamicParams) -> str:
    return "per row" if params.per_channel else "per tensor"


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Pack weights for `engine`. The engine is process-wide state; packed weights keep the format they
    were packed in and run with it, so it is restored once they are packed."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def packed_bytes(layer: nn.Module) -> int:
    """Bytes of a dynamic Linear's packed weight and bias, as its state_dict holds them: int8 codes, the
    weight's scales and zero points, the float bias. `weight_bytes` does not see them: the state_dict
    keeps them in a tuple, not as tensors."""
    weight, bias = layer.weight(), layer.bias()
    if weight.qscheme() == torch.per_channel_affine:
        scales, zeros = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
        qparams = scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()
    else:
        qparams = QPARAM_BYTES
    bias_bytes = 0 if bias is None else bias.numel() * bias.element_size()
    return weight.numel() * weight.element_size() + qparams + bias_bytes
