"""optimum-quanto: int8/int4/int2/float8 weights, optionally int8 activations with scales
calibrated on a few windows of text. Quantized in memory after a plain load (quanto models
cannot be saved through transformers)."""

from __future__ import annotations

import functools
import shutil
from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from quantbench import models
from quantbench.backends.base import (
    Availability,
    Backend,
    MethodParams,
    QuantizedModel,
    TorchModel,
    calibration_windows,
    meta_model,
    weight_count,
)
from quantbench.backends.layers import measured_coverage
from quantbench.backends.layout import DTYPE_BYTES, Layout
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel

CALIBRATION_ONLY = ("calibration_samples", "seq_len", "calibration")
WEIGHT_BITS = {"int8": 8, "float8": 8, "int4": 4, "int2": 2}
GROUP = 128  # optimum-quanto's fixed group size for int4/int2 weights


class QuantoParams(MethodParams):
    # A quanto type name rather than a width: float8 and int8 are both 8 bits (see `bits`).
    weights: Literal["int8", "int4", "int2", "float8"] = Field("int8", description="weight type")
    activations: Literal["none", "int8"] = Field(
        "none", description="int8: quantize activations too, with scales calibrated on text"
    )
    calibration_samples: PositiveInt = Field(
        16, description="activations=int8 only: windows that set activation scales"
    )
    seq_len: PositiveInt = Field(256, description="activations=int8 only: tokens per calibration window")
    calibration: str = Field(
        "builtin", description="activations=int8 only: the corpus the windows come from (as gptq's)"
    )
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls and of the layers left unquantized"
    )

    @property
    def bits(self) -> int:
        """Bits per weight code."""
        return WEIGHT_BITS[self.weights]

    @model_validator(mode="after")
    def _calibration_needs_activations(self) -> QuantoParams:
        given = self.model_fields_set & set(CALIBRATION_ONLY)
        if self.activations == "none" and given:
            raise ValueError(f"{'/'.join(sorted(given))} applies to activations=int8 only")
        if self.activations == "int8" and self.weights != "int8":
            raise ValueError("activations=int8 needs weights=int8")
        return self


class QuantoBackend(Backend):
    name = "quanto"
    library = "optimum-quanto"
    Params = QuantoParams
    headline = ("weights",)

    def layout(self, params: QuantoParams, device: str) -> Layout:
        grouped = "" if params.bits == 8 else f" group {GROUP}"
        return Layout(
            self.name,
            f"quanto {params.bits}-bit{grouped}",
            params.bits,
            params.compute_dtype,
            lambda rows, cols: _linear_bytes(rows, cols, params.bits, DTYPE_BYTES[params.compute_dtype]),
            dequantizes_weights=True,
        )

    def check(self, device: str) -> Availability:
        base = super().check(device)
        if base.ok and device == "cpu" and not (shutil.which("g++") and shutil.which("ninja")):
            return Availability(True, "int4/int2 need g++ and ninja to build quanto's C++ extension (apt install g++)")
        return base

    def calibration_corpus(self, params: QuantoParams) -> str | None:
        """Weight-only quanto needs no text; int8 activations take their scales from calibration windows."""
        return params.calibration if params.activations == "int8" else None

    def quantize(
        self, model: ResolvedModel, params: QuantoParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        from optimum.quanto import Calibration, QLinear, freeze, qfloat8, qint2, qint4, qint8, quantize

        qtypes = {"int8": qint8, "int4": qint4, "int2": qint2, "float8": qfloat8}
        tokenizer = models.load_tokenizer(model)
        activations = qint8 if params.activations == "int8" else None
        if activations is not None:  # a too-short corpus fails here, before any weight is read
            corpus = calibration if calibration is not None else params.calibration
            windows = calibration_windows(corpus, tokenizer, params.calibration_samples, params.seq_len)
        module = models.load(model, dtype=params.compute_dtype, device=device)
        count = weight_count(module)
        quantize(module, weights=qtypes[params.weights], activations=activations, exclude=["lm_head"])
        if activations is not None:
            with torch.no_grad(), Calibration():
                for window in windows:
                    module(input_ids=window[None].to(device), use_cache=False)
        freeze(module)
        layers = [m for m in module.modules() if isinstance(m, QLinear)]
        for layer in layers:
            if type(layer.weight).__name__ == "WeightQBitsTensor":
                layer.forward = _outside_inference_mode(layer.forward)
        return TorchModel.measured(
            module,
            tokenizer,
            device,
            "; ".join(sorted({_kernel(layer, params) for layer in layers})),
            weights=count,
            coverage=measured_coverage(meta_model(model), module),
        )


def _linear_bytes(rows: int, cols: int, bits: int, dtype_bytes: int) -> int:
    """8 bits (int8 and float8): a byte per weight and a scale per row; 4 and 2 bits: codes packed
    with a scale and a shift per group. Every QLinear also keeps input_scale and output_scale."""
    n = rows * cols
    scalars = 2 * dtype_bytes
    if bits == 8:
        return n + rows * dtype_bytes + scalars
    # quanto shrinks the group to the largest divisor of in_features up to 128 (576 -> 96)
    group = max(d for d in range(1, GROUP + 1) if cols % d == 0)
    return -(-n * bits // 8) + n // group * 2 * dtype_bytes + scalars


def _outside_inference_mode(forward):
    """quanto's generic packed int2/int4 weights fail under torch.inference_mode ("Cannot set
    version_counter for inference tensor" when the matmul transposes the wrapper tensor), and
    evals run in inference mode; these layers run under no_grad instead, which is equivalent here."""

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return forward(*args, **kwargs)

    return run


def _kernel(layer: torch.nn.Module, params: QuantoParams) -> str:
    """The matmul quanto 0.2.x dispatches to for this layer's weight type (`library/qbytes_mm.py`)."""
    kind = type(layer.weight).__name__
    on_cpu = layer.weight.device.type == "cpu"
    if kind == "TinyGemmWeightQBitsTensor":
        return "quanto int4 TinyGemm " + ("_weight_int4pack_mm_for_cpu" if on_cpu else "_weight_int4pack_mm")
    if kind == "AWQWeightQBitsTensor":
        return "quanto int4 AWQ GEMM (CUDA)"
    if kind == "WeightQBitsTensor":
        return f"quanto {params.weights} unpack + dequantize + {params.compute_dtype} matmul"
    if params.activations == "int8":
        return "quanto int8 weights × int8 activations torch._int_mm"
    if params.weights == "int8" and on_cpu and params.compute_dtype == "bfloat16" and layer.in_features % 4 == 0:
        return "quanto int8 torch._weight_int8pack_mm"
    return f"quanto {params.weights} {kind} dequantize + {params.compute_dtype} matmul"
