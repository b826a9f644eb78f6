"""The `memory` eval: the quantized model's checkpoint on disk, in bytes. (The memory peaks of
quantizing and of every eval are measured by the runner with trackers/memory.py.)

Checkpoint bytes (`--eval memory`, sweep `memory: {checkpoint: true}`): the model is written with
transformers' `save_pretrained` to a temporary directory and every file there is counted. Only a
checkpoint that reloads as the same model counts, which holds when the model is unquantized or
when its config.json carries a `quantization_config` that transformers' loaders rebuild. Checked
on a tiny Llama (transformers 5.23, 2026-11-23), save -> from_pretrained -> logits:
baseline, bnb int8 / nf4 (bitsandbytes 0.50.2) and torchao int8 / int4-intx (torchao 0.18.0)
reload exactly (max |Δlogit| 0). quanto (optimum-quanto 0.2.7) and hqq (0.2.8) quantize the
module in place: `save_pretrained` writes a file without a quantization_config, which reloads as
a different model (max |Δlogit| 1.44 and 1.16); rtn is fake quantization (dense dequantized
weights; the packed format has no saver). For those no metric is stored, only the reason, once,
in the row's note.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from quantbench.backends.base import QuantizedModel, weight_bytes
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel


class MemoryParams(BaseModel):
    """checkpoint bytes on disk, for methods that save"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: bool = Field(
        True, description="save the model to a temp dir and count its bytes (costs one write of the weights)"
    )


Params = MemoryParams


def check_inputs(source: ResolvedModel, params: MemoryParams, corpus: Corpus | None) -> None:
    """Nothing to check before quantizing: whether a method can save is known only after."""


def unsavable_reason(model: QuantizedModel) -> str:
    """Why `save_pretrained` would not write a checkpoint that reloads as this model; "" when it would."""
    module = model.module
    if getattr(getattr(module, "config", None), "quantization_config", None) is not None:
        return ""  # transformers' own quantizer (bnb, torchao, GPTQModel) rebuilds it on load
    foreign = sorted({type(m).__module__.split(".")[0] for m in module.modules()} - {"torch", "transformers"})
    if foreign:
        return (
            f"{', '.join(foreign)} modules hold the quantized weights and config.json has no quantization_config, "
            "so save_pretrained would write a file that reloads as a different model"
        )
    if model.weight_bytes < weight_bytes(module):
        return (
            "fake quantization: the module holds dense dequantized weights, and the packed format "
            "it stands for has no on-disk saver"
        )
    return ""


def checkpoint_bytes(model: QuantizedModel, directory: Path) -> int:
    """Write `model` with save_pretrained into `directory` and return the bytes of every file written."""
    model.module.save_pretrained(directory)
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def run(
    model: QuantizedModel, params: MemoryParams, corpus: Corpus | None, source: ResolvedModel
) -> list[tuple[str, float, str] | tuple[str, float, str, str]]:
    """The eval-registry entry point: `checkpoint_bytes`, or no value and the reason in its note."""
    if not params.checkpoint:
        return []
    reason = unsavable_reason(model)
    if reason:
        return [("checkpoint_bytes", math.nan, "bytes", reason)]
    with tempfile.TemporaryDirectory(prefix="quantbench-checkpoint-") as tmp:
        return [("checkpoint_bytes", checkpoint_bytes(model, Path(tmp)), "bytes")]
