"""The `memory` eval: the quantized model's checkpoint on disk, in bytes. (The memory peaks of
quantizing and of every eval are measured by the runner with trackers/memory.py.)

Checkpoint bytes (`--eval memory`, sweep `memory: {checkpoint: true}`): the model is written with
transformers' `save_pretrained` to a temporary directory and every file there is counted. Only a
checkpoint that reloads as the same model counts: the method's `is_serializable` says whether it
does (tests/backends/test_serialization.py checks every flag against a save and reload). For the
other methods no metric is stored, only the reason, once, in the row's note.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from quantbench.corpora import Corpus
from quantbench.engines.protocol import QuantizedModel
from quantbench.models import ResolvedModel

if TYPE_CHECKING:
    from quantbench.backends.base import Backend, MethodParams


class MemoryParams(BaseModel):
    """checkpoint bytes on disk, for methods that save"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: bool = Field(
        True, description="save the model to a temp dir and count its bytes (costs one write of the weights)"
    )


Params = MemoryParams


def check_inputs(source: ResolvedModel, params: MemoryParams, corpus: Corpus | None) -> None:
    """Nothing to check before quantizing."""


def not_measurable(
    method: Backend, method_params: MethodParams, params: MemoryParams
) -> list[tuple[str, float, str, str]]:
    """The rows `run` cannot measure for `method` with `method_params`, with no value and the reason:
    the runner stores these instead of running the eval. Empty when every row can be measured."""
    if params.checkpoint and not method.saves(method_params):
        reason = f"{method.name} cannot write its quantized model to disk as itself (not serializable)"
        return [("checkpoint_bytes", math.nan, "bytes", reason)]
    return []


def checkpoint_bytes(model: QuantizedModel, directory: Path) -> int:
    """Write `model` with its `save` into `directory` and return the bytes of every file written."""
    model.save(directory)
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def run(
    model: QuantizedModel, params: MemoryParams, corpus: Corpus | None, source: ResolvedModel
) -> list[tuple[str, float, str] | tuple[str, float, str, str]]:
    """The eval-registry entry point: `checkpoint_bytes` (for a method that can save; `not_measurable`)."""
    if not params.checkpoint:
        return []
    with tempfile.TemporaryDirectory(prefix="quantbench-checkpoint-") as tmp:
        return [("checkpoint_bytes", checkpoint_bytes(model, Path(tmp)), "bytes")]
