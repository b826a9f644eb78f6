"""llm-compressor (vLLM's quantization library): one-shot recipes that write a compressed-tensors
checkpoint, measured as transformers loads that checkpoint back. It pins an older transformers
than the main environment's, so its trials run in their own method environment
(`quantbench env create llmcompressor`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from quantbench import models
from quantbench.backends.base import (
    Backend,
    MethodParams,
    QuantizedModel,
    TorchModel,
    calibration_windows,
    check_group_size,
    meta_model,
    weight_count,
)
from quantbench.backends.layers import measured_coverage
from quantbench.backends.layout import DTYPE_BYTES, Layout, grouping, groups_per_row
from quantbench.corpora import CORPUS_FORMS, Corpus
from quantbench.models import ResolvedModel


class LlmCompressorParams(MethodParams):
    scheme: Literal["W8A8", "W4A16"] = Field(
        "W8A8",
        description="W8A8: SmoothQuant, then GPTQ int8 weights per channel with int8 activations per token; "
        "W4A16: GPTQ int4 weights in groups, activations unquantized",
    )
    smoothing_strength: float = Field(
        0.8, description="W8A8: how much of the activation outliers SmoothQuant moves into the weights (0-1)"
    )
    # 64, not llm-compressor's 128: it divides the widths of the default model (SmolLM2-135M: 576).
    group_size: int = Field(64, description="W4A16: weights sharing one scale")
    # 16 windows of 256 tokens (llm-compressor's examples use 512 × 2048): SmoothQuant + GPTQ of
    # SmolLM2-135M took 82 s on a 2-core CPU with these.
    n_samples: PositiveInt = Field(16, description="calibration windows")
    seq_len: PositiveInt = Field(256, description="tokens per calibration window")
    calibration: str = Field(
        "builtin",
        description=f"text the calibration windows come from: {CORPUS_FORMS}",
    )
    damp: float = Field(0.01, description="fraction of the Hessian's mean diagonal GPTQ adds for stability")

    @field_validator("smoothing_strength", "damp")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be between 0 and 1")
        return value

    @field_validator("group_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value


class LlmCompressorBackend(Backend):
    name = "llmcompressor"
    library = "llmcompressor"
    min_version = "0.14"
    environment = "llmcompressor"
    Params = LlmCompressorParams
    devices = ("cpu", "cuda")
    requires_calibration = True
    headline = ("scheme",)

    def layout(self, params: LlmCompressorParams, device: str) -> Layout:
        # As transformers reloads the compressed-tensors checkpoint (float32, the dtype it was
        # calibrated in): int8 codes with a scale per output row (W8A8), or 4-bit codes packed into
        # int32 with a scale per group (W4A16); a per-row int8 zero point, where kept, is under 1%.
        scale = DTYPE_BYTES["float32"]
        if params.scheme == "W8A8":
            return Layout(self.name, "llm-compressor W8A8", 8, "float32", lambda rows, cols: rows * cols + rows * scale)
        return Layout(
            self.name,
            f"llm-compressor W4A16 {grouping(params.group_size)}",
            4,
            "float32",
            lambda rows, cols: rows * -(-cols // 8) * 4 + rows * groups_per_row(params.group_size, cols) * scale,
        )

    def quantize(
        self, model: ResolvedModel, params: LlmCompressorParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        """`calibration`: the corpus `params.calibration` names, when the runner has read it already."""
        from transformers import AutoModelForCausalLM

        skeleton = meta_model(model)
        if params.scheme == "W4A16":
            check_group_size(skeleton, params.group_size)
        tokenizer = models.load_tokenizer(model)
        with tempfile.TemporaryDirectory(prefix="quantbench-llmcompressor-") as tmp:
            self._save_compressed(model, params, tokenizer, calibration, tmp)
            # What a user deploys: the compressed-tensors checkpoint as transformers loads it.
            module = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=model.ref.trust_remote_code)
            fmt = json.loads((Path(tmp) / "config.json").read_text())["quantization_config"].get("format", "")
        module = module.to(device).eval()
        return TorchModel.measured(
            module,
            tokenizer,
            device,
            f"compressed-tensors {fmt}".strip(),
            weights=weight_count(skeleton),
            coverage=measured_coverage(skeleton, module),
        )

    def _save_compressed(
        self, model: ResolvedModel, params: LlmCompressorParams, tokenizer, calibration: Corpus | None, directory: str
    ) -> None:
        """Calibrate and compress `model` with the scheme's recipe; write the checkpoint to `directory`."""
        from datasets import Dataset
        from llmcompressor import oneshot

        corpus = calibration if calibration is not None else params.calibration
        windows = calibration_windows(corpus, tokenizer, params.n_samples, params.seq_len)
        ids = windows.tolist()
        dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]})
        work = models.load(model, "float32")
        oneshot(
            model=work,
            tokenizer=tokenizer,
            dataset=dataset,
            recipe=recipe(params),
            num_calibration_samples=params.n_samples,
            max_seq_length=params.seq_len,
            shuffle_calibration_samples=False,  # the windows are already spread over the corpus
        )
        work.save_pretrained(directory, save_compressed=True)
        tokenizer.save_pretrained(directory)


def recipe(params: LlmCompressorParams) -> list:
    """The llm-compressor modifiers of `params.scheme`; lm_head stays in float, as llm-compressor's examples keep it."""
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor.modifiers.quantization import GPTQModifier

    scheme = preset_name_to_scheme(params.scheme, ["Linear"])
    if params.scheme == "W4A16":
        scheme.weights.group_size = params.group_size
    gptq = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], dampening_frac=params.damp)
    if params.scheme == "W4A16":
        return [gptq]
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    return [SmoothQuantModifier(smoothing_strength=params.smoothing_strength), gptq]
