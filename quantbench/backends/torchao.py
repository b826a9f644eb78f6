"""torchao through transformers' TorchAoConfig: int8 weight-only, int8 dynamic activations with
int8 weights, or int4 weight-only (IntxWeightOnlyConfig on CPU, the tinygemm Int4 config on CUDA).
With `smoothquant=true` the int8-activation scheme is applied after SmoothQuant
(`torchao.prototype.smoothquant`): calibration text sets, per input channel, a factor that moves
activation outliers into the weights before both are quantized."""

from __future__ import annotations

from pathlib import Path
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
    check_group_size,
    int_choice,
    meta_model,
    older_than,
    weight_count,
)
from quantbench.backends.layers import measured_coverage
from quantbench.backends.layout import DTYPE_BYTES, Layout, groups_per_row
from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
from quantbench.models import ResolvedModel

SMOOTHQUANT_ONLY = ("alpha", "n_samples", "seq_len", "calibration")
MIN_TORCH = "2.11"  # older torch: torchao skips loading its C++ ops (torchao/__init__.py)


class TorchaoParams(MethodParams):
    bits: int_choice(4, 8) = Field(8, description="bits per weight code")
    activations: Literal["none", "int8"] = Field(
        "none", description="int8: quantize activations too (dynamic, per token)"
    )
    group_size: int_choice(32, 64, 128, 256) = Field(
        32, description="4-bit only: weights sharing one scale (8-bit scales are per output row)"
    )
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls and of the layers left unquantized"
    )
    smoothquant: bool = Field(
        False, description="activations=int8 only: SmoothQuant first (per-channel factors calibrated on text)"
    )
    alpha: float = Field(
        0.5, description="smoothquant only: migration strength in (0, 1); higher moves more range into the weights"
    )
    # 4 × 512 tokens: what SmoothQuant needed on this CPU (7 s for SmolLM2-135M) to find the outlier channels.
    n_samples: PositiveInt = Field(4, description="smoothquant only: calibration windows")
    seq_len: PositiveInt = Field(512, description="smoothquant only: tokens per calibration window")
    calibration: str = Field("builtin", description="smoothquant only: the corpus the windows come from (as gptq's)")

    @model_validator(mode="after")
    def _options_match_bits(self) -> TorchaoParams:
        if self.bits == 8 and "group_size" in self.model_fields_set:
            raise ValueError("group_size applies to bits=4 only (8-bit scales are per output row)")
        if self.smoothquant and self.activations != "int8":
            raise ValueError("smoothquant=true needs activations=int8 (it rebalances activation and weight ranges)")
        given = self.model_fields_set & set(SMOOTHQUANT_ONLY)
        if given and not self.smoothquant:
            raise ValueError(f"{', '.join(sorted(given))} applies to smoothquant=true only")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {self.alpha}")
        return self


class TorchaoBackend(Backend):
    name = "torchao"
    library = "torchao"
    Params = TorchaoParams
    headline = ("bits",)
    is_serializable = True
    note = "smoothquant=true cannot save its checkpoint (torchao cannot read a SmoothQuant config back)"

    def saves(self, params: TorchaoParams) -> bool:
        return not params.smoothquant  # SmoothQuantModel: torchao cannot read its config back

    def layout(self, params: TorchaoParams, device: str) -> Layout:
        dtype = params.compute_dtype
        if params.smoothquant:  # the int8 layer keeps 1 / factor per input channel, in the compute dtype
            size = DTYPE_BYTES[dtype]
            return Layout(
                self.name,
                "torchao 8-bit smoothquant",
                8,
                dtype,
                lambda rows, cols: rows * cols + rows * (4 + 1) + cols * size,
            )
        if params.bits == 8:  # Int8WeightOnlyConfig: fp32 scale + int8 zero point per row
            return Layout(self.name, "torchao 8-bit", 8, dtype, lambda rows, cols: rows * cols + rows * (4 + 1))
        group = params.group_size
        # Int4WeightOnlyConfig (weight-only on CUDA): codes two per byte, bf16 scale and zero per group
        if device == "cuda" and params.activations == "none":
            return Layout(
                self.name,
                f"torchao 4-bit int4 group {group}",
                4,
                dtype,
                lambda rows, cols: -(-rows * cols // 2) + rows * groups_per_row(group, cols) * 2 * 2,
            )
        # IntxWeightOnlyConfig (what quantize picks off CUDA) and Int8DynamicActivationIntxWeightConfig:
        # int8 codes, a dtype scale, an int8 zero
        size = DTYPE_BYTES[dtype]
        return Layout(
            self.name,
            f"torchao 4-bit intx group {group}",
            4,
            dtype,
            lambda rows, cols: rows * cols + rows * groups_per_row(group, cols) * (size + 1),
            dequantizes_weights=True,
        )

    def check(self, device: str) -> Availability:
        base = super().check(device)
        if not base.ok:
            return base
        too_old = older_than("torch", torch.__version__, MIN_TORCH)
        return Availability(not too_old, too_old)

    def calibration_corpus(self, params: TorchaoParams) -> str | None:
        """Only SmoothQuant reads text: its factors come from the calibration windows' activations."""
        return params.calibration if params.smoothquant else None

    def quantize(
        self, model: ResolvedModel, params: TorchaoParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        from transformers import TorchAoConfig

        skeleton = meta_model(model)
        if params.smoothquant:
            return _smoothquant(model, params, device, calibration, weight_count(skeleton))
        if params.bits == 4:
            check_group_size(skeleton, params.group_size)
        config, kernel = _config(params, device)
        module = models.load(
            model,
            dtype=params.compute_dtype,
            device=device,
            quantization_config=TorchAoConfig(config),
            device_map={"": device},
        )
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            kernel,
            weights=weight_count(skeleton),
            coverage=measured_coverage(skeleton, module),
        )


def _config(params: TorchaoParams, device: str) -> tuple[object, str]:
    """The torchao config object for `params` and a description of the linear kernel it runs."""
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup

    if params.bits == 8 and params.activations == "int8":
        return Int8DynamicActivationInt8WeightConfig(), "torchao Int8Tensor dynamic int8 activations, int_scaled_matmul"
    if params.bits == 8:
        return Int8WeightOnlyConfig(), f"torchao Int8Tensor weight-only (int8 cast to {params.compute_dtype} + mm)"
    if params.activations == "int8":
        return int8_activations_int4_weights(params.group_size), (
            "torchao IntxUnpackedToInt8Tensor dynamic int8 activations, simulated (activations rounded to int8 "
            f"per token, int4 weights in int8 bytes dequantized, {params.compute_dtype} mm)"
        )
    if device == "cuda":
        return Int4WeightOnlyConfig(group_size=params.group_size), "torchao Int4Tensor weight-only (CUDA)"
    # The default Int4WeightOnlyConfig needs the CUDA-only mslk kernels; this one stores the int4
    # codes unpacked in int8 and dequantizes before the matmul: no smaller than int8 weight-only.
    config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(params.group_size))
    return (
        config,
        f"torchao IntxUnpackedToInt8Tensor (int4 in int8 bytes, dequantize + {params.compute_dtype} mm)",
    )


def _smoothquant(
    model: ResolvedModel, params: TorchaoParams, device: str, calibration: Corpus | None, count: int
) -> QuantizedModel:
    """Observe each linear layer's input on the calibration windows, then quantize it with int8 dynamic
    activations after SmoothQuant's rescaling. The output head stays in float as in every torchao trial."""
    from torchao.prototype.smoothquant import SmoothQuantConfig
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    from torchao.quantization.quantize_.common.quantization_step import QuantizationStep

    tokenizer = models.load_tokenizer(model)
    # A too-short corpus fails here, before any weight is read.
    windows = calibration_windows(
        calibration if calibration is not None else params.calibration, tokenizer, params.n_samples, params.seq_len
    )
    module = models.load(model, dtype=params.compute_dtype, device=device)
    head = module.get_output_embeddings()

    def in_scope(layer: torch.nn.Module, name: str) -> bool:
        return isinstance(layer, torch.nn.Linear) and layer is not head

    # The running abs-max observer keeps one vector per layer instead of every calibration input; with
    # dynamic activations only its per-channel maximum is used, so the factors are the same.
    config = SmoothQuantConfig(
        Int8DynamicActivationInt8WeightConfig(),
        step=QuantizationStep.PREPARE,
        alpha=params.alpha,
        use_running_absmax=True,
    )
    quantize_(module, config, filter_fn=in_scope)
    with torch.no_grad():
        for window in windows:
            module(input_ids=window[None].to(device), use_cache=False)
    config.step = QuantizationStep.CONVERT
    quantize_(module, config, filter_fn=in_scope)
    kernel = f"torchao Int8Tensor dynamic int8 activations after SmoothQuant (alpha {params.alpha}), int_scaled_matmul"
    return SmoothQuantModel.measured(module, tokenizer, device, kernel, weights=count)


class SmoothQuantModel(TorchModel):
    """A SmoothQuant model cannot be written as itself: quantize_ on a loaded module leaves transformers no
    quantizer to write the tensor subclasses with, and torchao 0.18 cannot read a SmoothQuantConfig back
    (its QuantizationStep is outside the modules config_from_dict allows). Checked on the tiny Llama."""

    def save(self, directory: Path) -> None:
        raise QuantbenchError("torchao cannot reload a SmoothQuant checkpoint, so none is written (smoothquant=true)")


def int8_activations_int4_weights(group_size: int) -> object:
    """torchao's int8 dynamic activations with int4 grouped weights: also the scheme `qat` fine-tunes
    for, so `torchao:bits=4,activations=int8` is a `qat` trial's post-training twin."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup

    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
