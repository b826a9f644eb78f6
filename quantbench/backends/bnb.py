"""bitsandbytes through transformers' BitsAndBytesConfig: LLM.int8 (with outlier threshold) or
4-bit nf4/fp4 (optionally double-quantized), quantized while the model loads."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from quantbench import models
from quantbench.backends.base import (
    Availability,
    Backend,
    MethodParams,
    QuantizedModel,
    TorchModel,
    int_choice,
    meta_model,
    weight_count,
)
from quantbench.backends.layers import CONV1D, LINEAR, all_matrices, measured_coverage
from quantbench.backends.layout import Layout
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel

FOUR_BIT_ONLY = ("quant_type", "double_quant")
BLOCK = 64  # 4-bit blocksize transformers' BitsAndBytesConfig uses
NESTED_BLOCK = 256  # double quant: absmax values are quantized again in blocks of 256
GEMV_BLOCK_N = 32  # bitsandbytes' `_convert_weight_packed_for_cpu` default block_n


class BnbParams(MethodParams):
    bits: int_choice(4, 8) = Field(4, description="bits per weight: 8 = LLM.int8, 4 = nf4/fp4 code book")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit only: code book, nf4 (normal float) or fp4")
    double_quant: bool = Field(False, description="4-bit only: quantize the per-block scales too")
    threshold: float = Field(6.0, description="8-bit only: activations above it take the fp16 outlier path")
    # bf16 by default: with fp32 inputs the int8 path casts to fp16 anyway, and 4-bit dequantizes fastest to bf16.
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls and of the layers left unquantized"
    )

    @model_validator(mode="after")
    def _options_match_bits(self) -> BnbParams:
        given = self.model_fields_set
        if self.bits == 8 and given & set(FOUR_BIT_ONLY):
            raise ValueError(f"{'/'.join(sorted(given & set(FOUR_BIT_ONLY)))} applies to bits=4 only")
        if self.bits == 4 and "threshold" in given:
            raise ValueError("threshold applies to bits=8 only (the LLM.int8 outlier threshold)")
        return self


class BnbBackend(Backend):
    name = "bnb"
    library = "bitsandbytes"
    min_version = "0.46.1"  # the oldest release transformers 5.x accepts
    Params = BnbParams
    headline = ("bits",)
    is_serializable = True
    layer_kinds = frozenset({LINEAR, CONV1D})  # transformers' bnb integration converts Conv1D too

    def layout(self, params: BnbParams, device: str) -> Layout:
        if params.bits == 8:
            return Layout(self.name, "bnb 8-bit", 8, params.compute_dtype, _int8_bytes)
        extra = " + double quant" if params.double_quant else ""
        return Layout(
            self.name,
            f"bnb 4-bit {params.quant_type}{extra}",
            4,
            params.compute_dtype,
            lambda rows, cols: _four_bit_bytes(rows * cols, params.double_quant),
            dequantizes_weights=True,
        )

    def check(self, device: str) -> Availability:
        base = super().check(device)
        if not base.ok:
            return base
        if device == "cpu" and torch.backends.cpu.get_cpu_capability() != "AVX512":
            return Availability(
                True, "CPU lacks AVX512: int8 runs as an fp32 matmul and 4-bit dequantizes in a scalar loop (slow)"
            )
        return Availability(True)

    def refusal(self, model: ResolvedModel, params: BnbParams, device: str) -> str:
        """Also: the AVX512-BF16 gemv that 4-bit layers repack for on CPU takes output widths in
        blocks of 32 only (bitsandbytes asserts "N must be divisible by block_n" on the first forward)."""
        reason = super().refusal(model, params, device)
        if reason or not _repacks_on_first_forward(params, device):
            return reason
        skeleton = meta_model(model)
        for m in all_matrices(skeleton).values():
            converted = m.kind in (LINEAR, CONV1D) or isinstance(m.module, torch.nn.Linear)  # a router too
            if converted and m.rows % GEMV_BLOCK_N:
                return (
                    f"bnb 4-bit cannot run {type(skeleton).__name__} on this CPU: its {m.layer_type} {m.name} has "
                    f"{m.rows} outputs, and the AVX512-BF16 gemv needs a multiple of {GEMV_BLOCK_N} (use bits=8)"
                )
        return ""

    def quantize(
        self, model: ResolvedModel, params: BnbParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        from transformers import BitsAndBytesConfig

        if params.bits == 8:
            config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=params.threshold)
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=params.quant_type,
                bnb_4bit_use_double_quant=params.double_quant,
                bnb_4bit_compute_dtype=models.DTYPES[params.compute_dtype],
            )
        skeleton = meta_model(model)
        count = weight_count(skeleton)
        module = models.load(
            model, dtype=params.compute_dtype, device=device, quantization_config=config, device_map={"": device}
        )
        quantized = TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            _kernel(params, device),
            weights=count,
            coverage=measured_coverage(skeleton, module),
        )
        if _repacks_on_first_forward(params, device):
            # Linear4bit repacks its codes for the AVX512-BF16 gemv on its first CPU forward, a
            # one-time transient that the heap keeps (120-190 MiB on the embedded model). One token
            # through the model here makes it part of quantizing, after weight_bytes counted the
            # stored format, so the first eval's memory peak is the model's, as every later one is.
            quantized.logits(torch.zeros((1, 1), dtype=torch.long))
        return quantized


def _int8_bytes(rows: int, cols: int) -> int:
    return rows * cols + rows * 4 + 1  # int8 codes, fp32 SCB per row, uint8 `weight_format` buffer


def _four_bit_bytes(n: int, double_quant: bool) -> int:
    """Codes two per uint8 and the 16 fp32 values of the code book, with fp32 absmax per block of 64;
    double quant: uint8 absmax per block, fp32 per 256 blocks and a 256-entry fp32 nested code map."""
    blocks = -(-n // BLOCK)
    meta = 16 * 4
    if double_quant:
        meta += blocks + -(-blocks // NESTED_BLOCK) * 4 + 256 * 4
    else:
        meta += blocks * 4
    return -(-n // 2) + meta


def _repacks_on_first_forward(params: BnbParams, device: str) -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return device == "cpu" and params.bits == 4 and has_avx512bf16()


def _kernel(params: BnbParams, device: str) -> str:
    """The path bitsandbytes 0.4x/0.5x takes for this format (`backends/cpu/ops.py` on CPU)."""
    if device == "cuda":
        return "bnb cuda int8 (LLM.int8)" if params.bits == 8 else f"bnb cuda {params.quant_type}"
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    if params.bits == 8:
        return "bnb cpu int8 torch._int_mm" if avx512 else "bnb cpu int8 fallback (fp32 matmul, no AVX512)"
    if _repacks_on_first_forward(params, device):
        return f"bnb cpu {params.quant_type} gemv_4bit (AVX512-BF16)"
    scalar = "" if avx512 else " (scalar loop, no AVX512)"
    return f"bnb cpu {params.quant_type} dequantize{scalar} + {params.compute_dtype} matmul"
