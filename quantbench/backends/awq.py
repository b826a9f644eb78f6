"""AWQ through GPTQModel's own implementation (AutoAWQ is deprecated; transformers v5 loads AWQ
through GPTQModel too). 4-bit GEMM format; on CPU its kernels need bf16/fp16."""

from __future__ import annotations

from importlib import metadata

import torch
from pydantic import Field

from quantbench.backends.base import LayerCodes, int_choice, meta_model
from quantbench.backends.gptq import GptqModelBackend, GptqModelParams
from quantbench.backends.layers import EXPERTS, LINEAR, weight_matrices
from quantbench.backends.layout import Layout, grouping, groups_per_row
from quantbench.errors import QuantbenchError
from quantbench.kernels.awq import convert_awq
from quantbench.kernels.format import int32_words
from quantbench.models import ResolvedModel

CLIP_BATCH = 64  # GPTQModel's AWQ clip search walks output rows in batches of 64 (or 256)
# Model types whose AWQ pass fails inside GPTQModel, as seen with 7.6.0 on tiny random models of each.
FAILS_ON = {"phi3": "fails packing the fused qkv_proj (KeyError 'q_zeros' in AWQProcessor.pack_module)"}


class AwqParams(GptqModelParams):
    bits: int_choice(4) = Field(4, description="bits per weight code (GPTQModel's AWQ GEMM format is 4-bit only)")
    # Not aliased to the shared `symmetric`: it means the opposite, and stored trials spell it this way.
    zero_point: bool = Field(True, description="a zero point per group (asymmetric range), as AWQ uses by default")


class AwqBackend(GptqModelBackend):
    name = "awq"
    Params = AwqParams
    checkpoint_formats = ("gemm",)
    # Not Conv1D: GPTQModel's AWQ scale search reads every weight as (out, in), and GPT-2's Conv1D
    # stores (in, out) (a shape mismatch inside AWQProcessor._compute_best_scale).
    layer_kinds = frozenset({LINEAR, EXPERTS})

    def refusal(self, model: ResolvedModel, params: AwqParams, device: str) -> str:
        """Also: model types GPTQModel's AWQ fails on (`FAILS_ON`), and layers its clip search cannot batch."""
        reason = super().refusal(model, params, device)
        if reason:
            return reason
        skeleton = meta_model(model)
        failure = FAILS_ON.get(skeleton.config.model_type)
        if failure:
            return f"awq cannot quantize {type(skeleton).__name__}: GPTQModel {_version()}'s AWQ {failure}"
        return _unclippable(skeleton)

    def pack_backend(self, device: str) -> str:
        # GPTQModel packs AWQ layers with its CUDA GEMM kernel unless told otherwise ("AWQ: CUDA is
        # not available" on CPU); its portable torch kernel writes the same GEMM checkpoint.
        return "awq_torch" if device == "cpu" else "auto"

    def codes_params(self, bits: int, group_size: int, symmetric: bool) -> AwqParams:
        if bits != 4:
            raise QuantbenchError(f"awq gives 4-bit codes only (GPTQModel's AWQ GEMM format), got bits={bits}")
        return AwqParams(group_size=group_size, zero_point=not symmetric)

    def layer_codes(self, tensors: dict[str, torch.Tensor], params: AwqParams, layout: str) -> LayerCodes:
        qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
        return LayerCodes(convert_awq(qweight, qzeros, scales, params.group_size), tensors["bias"])

    def layout(self, params: AwqParams, device: str) -> Layout:
        return Layout(
            self.name,
            f"awq 4-bit {grouping(params.group_size)}",
            4,
            params.compute_dtype,
            lambda rows, cols: _linear_bytes(rows, cols, params.group_size),
        )

    def gptqmodel_config(self, params: AwqParams) -> object:
        from gptqmodel import AWQConfig

        return AWQConfig(bits=params.bits, group_size=params.group_size, sym=not params.zero_point)

    def check_shapes(self, skeleton: torch.nn.Module, params: AwqParams) -> None:
        super().check_shapes(skeleton, params)
        reason = _unclippable(skeleton)
        if reason:
            raise QuantbenchError(reason)


def _unclippable(skeleton: torch.nn.Module) -> str:
    """Why GPTQModel's AWQ clip search cannot take a layer it quantizes (routers and the head it keeps
    in float), or "". Its defuser splits fused experts' [gate; up] into two layers of half the rows."""
    for m in weight_matrices(skeleton).values():
        rows = m.rows // 2 if m.kind == EXPERTS and m.attribute == "gate_up_proj" else m.rows
        if rows % CLIP_BATCH:
            return (
                f"awq cannot quantize {type(skeleton).__name__}: its {m.layer_type} {m.name} has {rows} outputs, "
                f"and GPTQModel's AWQ clip search needs a multiple of {CLIP_BATCH}"
            )
    return ""


def _version() -> str:
    try:
        return metadata.version("gptqmodel")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _linear_bytes(rows: int, cols: int, group_size: int) -> int:
    """AWQ GEMM: qweight (cols, rows·4/32) int32, qzeros (groups, rows·4/32) int32, scales (groups, rows) fp16."""
    words = int32_words(rows, 4) * 4
    return cols * words + groups_per_row(group_size, cols) * (words + rows * 2)
