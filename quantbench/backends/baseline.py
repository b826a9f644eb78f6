"""The unquantized model in fp32, bf16 or fp16: the reference every method is measured against."""

from __future__ import annotations

from typing import Literal

from quantbench import models
from quantbench.backends.base import Backend, MethodParams, QuantizedModel, TorchModel, weight_count
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel


class BaselineParams(MethodParams):
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class BaselineBackend(Backend):
    name = "baseline"
    library = "torch"
    Params = BaselineParams
    headline = ("dtype",)
    is_serializable = True

    def quantize(
        self, model: ResolvedModel, params: BaselineParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        module = models.load(model, dtype=params.dtype, device=device)
        return TorchModel.measured(
            module, models.load_tokenizer(model), device, f"torch {params.dtype} matmul", weights=weight_count(module)
        )
