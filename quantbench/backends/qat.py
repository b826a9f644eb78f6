"""Quantization-aware training through torchao: a short fine-tune with the weights and activations
fake-quantized in the forward pass, then converted to the real scheme. The scheme is torchao's int8
dynamic activations with int4 grouped weights (`Int8DynamicActivationIntxWeightConfig`), so the
post-training twin of a `qat` trial is `torchao:bits=4,activations=int8` at the same group size:
the same table shows what the training steps bought. The training is the method's quantize cost.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator

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
    weight_count,
)
from quantbench.backends.layers import measured_coverage
from quantbench.backends.layout import Layout
from quantbench.backends.torchao import MIN_TORCH, TorchaoBackend, TorchaoParams, int8_activations_int4_weights
from quantbench.corpora import CORPUS_FORMS, Corpus
from quantbench.models import DTYPES, ResolvedModel


class QatParams(MethodParams):
    # Each step is one window: 5-7 s per 256 tokens for SmolLM2-135M on a 2-core CPU.
    steps: int = Field(4, description="training steps (one window of seq_len tokens each); at least 1")
    learning_rate: PositiveFloat = Field(1e-5, description="AdamW learning rate")
    seq_len: PositiveInt = Field(256, description="tokens per training window")
    calibration: str = Field(
        "builtin",
        description=f"text the training windows come from: {CORPUS_FORMS}",
    )
    # 64, not torchao's 32: it divides SmolLM2's 576 and every multiple of 128, and is what the
    # post-training twin is compared at.
    group_size: int_choice(32, 64, 128, 256) = Field(64, description="int4 weights sharing one scale")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the converted model's matmuls (training runs in float32)"
    )

    @field_validator("steps")
    @classmethod
    def _trains(cls, value: int) -> int:
        if value < 1:
            raise ValueError(
                f"must be at least 1, got {value} (without training the scheme is torchao:bits=4,activations=int8)"
            )
        return value

    @property
    def bits(self) -> int:
        """Bits per weight code: the scheme's int4."""
        return 4

    def twin(self) -> TorchaoParams:
        """The `torchao` parameters of the same scheme without training."""
        return TorchaoParams(bits=4, activations="int8", group_size=self.group_size, compute_dtype=self.compute_dtype)


class QatBackend(Backend):
    name = "qat"
    library = "torchao"
    Params = QatParams
    requires_calibration = True
    headline = ("steps", "group_size")
    # quantize_ on a loaded module leaves transformers no quantizer to write the tensor subclasses
    # with: save_pretrained fails ("invalid python storage"; checked with torchao 0.18).
    is_serializable = False
    note = f"fine-tunes the model (all its weights, AdamW in float32); torch >= {MIN_TORCH}"

    def layout(self, params: QatParams, device: str) -> Layout:
        twin = TorchaoBackend().layout(params.twin(), device)
        return Layout(
            self.name, f"qat int4 group {params.group_size}", 4, twin.dtype, twin.linear_bytes, dequantizes_weights=True
        )

    def check(self, device: str) -> Availability:
        return TorchaoBackend().check(device)

    def quantize(
        self, model: ResolvedModel, params: QatParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        """Train `params.steps` windows of the calibration corpus with fake quantization, then convert."""
        skeleton = meta_model(model)
        check_group_size(skeleton, params.group_size)
        tokenizer = models.load_tokenizer(model)
        corpus = calibration if calibration is not None else params.calibration
        windows = calibration_windows(corpus, tokenizer, params.steps, params.seq_len)
        module = models.load(model, dtype="float32", device=device)
        count = weight_count(module)
        train_quantized(module, windows, params.learning_rate, params.group_size, params.compute_dtype, device)
        kernel = (
            f"torchao IntxUnpackedToInt8Tensor after {params.steps} QAT steps: int8 activations simulated per "
            f"token, int4 weights in int8 bytes dequantized, {params.compute_dtype} mm"
        )
        return TorchModel.measured(
            module, tokenizer, device, kernel, weights=count, coverage=measured_coverage(skeleton, module)
        )


def train_quantized(
    module: torch.nn.Module,
    windows: torch.Tensor,
    learning_rate: float,
    group_size: int,
    compute_dtype: str,
    device: str,
) -> None:
    """Fine-tune `module` (float32) on `windows` (one AdamW step each) with the scheme fake-quantized,
    then cast it to `compute_dtype` and convert its linear layers in place. The output head stays in
    float as in every method. With no windows this is exactly the scheme's post-training quantization."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    head = module.get_output_embeddings()

    def in_scope(layer: torch.nn.Module, name: str) -> bool:
        return isinstance(layer, torch.nn.Linear) and layer is not head

    scheme = int8_activations_int4_weights(group_size)
    quantize_(module, QATConfig(scheme, step="prepare"), filter_fn=in_scope)
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=learning_rate)
    for window in windows:
        ids = window[None].to(device)
        module(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    del optimizer  # its two float32 states per weight would otherwise stay alive through the evals
    module.eval().requires_grad_(False)
    # Cast before converting, as the post-training twin loads in compute_dtype and then quantizes. Only
    # the parameters: transformers keeps buffers such as the rotary frequencies in float32 at any dtype.
    for param in module.parameters():
        param.data = param.data.to(DTYPES[compute_dtype])
    quantize_(module, QATConfig(scheme, step="convert"), filter_fn=in_scope)
