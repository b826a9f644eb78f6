"""The unquantized model in fp32, bf16 or fp16: the reference every method is measured against."""

from __future__ import annotations

import dataclasses
from typing import Literal

from quantbench import models
from quantbench.backends.base import Backend, MethodParams, QuantizedModel, TorchModel, stored_as, weight_count
from quantbench.backends.layers import measured_coverage
from quantbench.backends.layout import DTYPE_BYTES, Layout
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel


class BaselineParams(MethodParams):
    compute_dtype: Literal["float32", "bfloat16", "float16"] = stored_as(
        "compute_dtype", "dtype", "float32", description="dtype the model is loaded in and computes in"
    )

    @property
    def bits(self) -> int:
        """Bits per weight: the dtype's width."""
        return 8 * DTYPE_BYTES[self.compute_dtype]


class BaselineBackend(Backend):
    name = "baseline"
    library = "torch"
    Params = BaselineParams
    headline = ("compute_dtype",)
    is_serializable = True
    layer_kinds = frozenset()  # stores every weight as loaded

    def layout(self, params: BaselineParams, device: str) -> Layout:
        dtype, size = params.compute_dtype, DTYPE_BYTES[params.compute_dtype]
        dense = Layout(self.name, f"baseline {dtype}", params.bits, dtype, lambda rows, cols: rows * cols * size)
        return dataclasses.replace(dense, is_quantized=False)

    def quantize(
        self, model: ResolvedModel, params: BaselineParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        dtype = params.compute_dtype
        module = models.load(model, dtype=dtype, device=device)
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            f"torch {dtype} matmul",
            weights=weight_count(module),
            coverage=measured_coverage(module, module),
        )
