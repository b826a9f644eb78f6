"""Which units of a model a method damages most: a per-unit sensitivity map.

For a method at its bit width, each unit (a decoder block, or with `units=projections` each weight
matrix of a block: q/k/v/o, gate/up/down, fused experts) is quantized alone while every other
weight stays unquantized, and the divergence eval's KLD and top-1 agreement are measured against
the unquantized model's cached pass (evals/divergence.py: computed once per model and tokens, so
a map costs one forward pass per unit). Each unit's weights are quantized once and swapped into
one float model, then swapped back, so nothing is quantized twice and the model is loaded once.

Only methods whose quantized model computes with dequantized weights can be mapped this way (rtn,
hqq, triton: `Backend.float_model` / `Backend.rounded`); the others quantize inside their library
and say so in one line before any work.

Rows, one per unit: `unit_kld_mean` (nats) and `unit_top1_agreement` (%), the unit's module name
in the row's note. Beside them: `float_kld_mean`, the float model with no unit quantized (0 where
the method computes in fp32; bf16 rounding for hqq's default compute dtype, a floor every unit's
KLD includes), and `all_kld_mean`, the trial's fully quantized model, which says how far the sum
of the units' KLDs (the recipe's assumption: damages add up) is from the whole.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from quantbench import models
from quantbench.corpora import Corpus
from quantbench.engines.protocol import QuantizedModel
from quantbench.engines.torch_model import TorchModel, weight_count
from quantbench.errors import QuantbenchError
from quantbench.evals import divergence, progress
from quantbench.evals.divergence import DivergenceParams
from quantbench.models import ResolvedModel

if TYPE_CHECKING:
    from quantbench.backends.base import Backend, MethodParams
    from quantbench.backends.layers import WeightMatrices

UNIT_KLD, UNIT_TOP1, FLOAT_KLD, ALL_KLD = "unit_kld_mean", "unit_top1_agreement", "float_kld_mean", "all_kld_mean"
_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")  # the first indexed module on a name's path: the decoder block


class SensitivityParams(DivergenceParams):
    """KLD from the unquantized model with one unit quantized at a time (a per-unit sensitivity map)"""

    units: Literal["blocks", "projections"] = Field(
        "blocks", description="blocks: each decoder block; projections: each weight matrix within each block"
    )
    # Smaller than divergence's defaults: one forward pass per unit, so the map of a 30-block model
    # takes minutes on a laptop CPU.
    seq_len: int = Field(512, ge=2, description="tokens per scored window")
    max_tokens: int | None = Field(2048, ge=2, description="score only the first N corpus tokens; unset = all")


Params = SensitivityParams


@dataclass(frozen=True)
class UnitDamage:
    unit: str
    kld_mean: float
    top1_agreement: float  # %


def block_of(name: str) -> str:
    """The decoder block a matrix belongs to (`model.layers.3` for `model.layers.3.mlp.down_proj`), or
    the name itself for a matrix outside the indexed blocks (an untied output head)."""
    match = _BLOCK.match(name)
    return match.group(1) if match else name


def group_units(names: list[str], units: str) -> dict[str, list[str]]:
    """Unit -> the matrix names it holds: one unit per block, or one per matrix (`projections`)."""
    if units == "projections":
        return {name: [name] for name in names}
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(block_of(name), []).append(name)
    return grouped


def check_method(backend: Backend, method_params: MethodParams) -> None:
    """QuantbenchError, before any work, for a method that cannot be mapped unit by unit."""
    refusal = backend.unit_map_refusal(method_params)
    if refusal:
        raise QuantbenchError(refusal)


def map_units(
    backend: Backend,
    method_params: MethodParams,
    source: ResolvedModel,
    corpus: Corpus,
    params: SensitivityParams,
    device: str,
    only: list[str] | None = None,
) -> tuple[float, list[UnitDamage]]:
    """The float model's KLD (no unit quantized) and each unit's damage, in model order; `only`
    restricts the map to those units (exact names; QuantbenchError naming any that does not exist)."""
    module, matrices = backend.float_model(source, method_params, device)
    grouped = group_units(list(matrices), params.units)
    if only is not None:
        unknown = [unit for unit in only if unit not in grouped]
        if unknown:
            raise QuantbenchError(
                f"no {params.units[:-1]} named {', '.join(unknown)} in this model; units: {', '.join(grouped)}"
            )
        grouped = {unit: grouped[unit] for unit in only}
    model = TorchModel.measured(
        module, models.load_tokenizer(source), device, "sensitivity map: float model", weight_count(module)
    )
    bits = method_params.bits
    todo = len(grouped) + 1
    floor = _quiet(divergence.evaluate, model, corpus, params, source)
    progress.report(1, todo)  # in units: a unit's own windows would flood the console
    damages = []
    for i, (unit, names) in enumerate(grouped.items()):
        with _swapped(matrices, names, lambda m: backend.rounded(m, bits, method_params)):
            result = _quiet(divergence.evaluate, model, corpus, params, source)
        damages.append(UnitDamage(unit, float(result.kld.mean()), 100.0 * result.top1_agree / len(result.kld)))
        progress.report(i + 2, todo)
    return float(floor.kld.mean()), damages


def _quiet(evaluate: Callable[..., divergence.DivergenceResult], *args: object) -> divergence.DivergenceResult:
    with progress.reporting(None):
        return evaluate(*args)


@contextmanager
def _swapped(
    matrices: Mapping[str, WeightMatrices], names: list[str], rounded: Callable[[WeightMatrices], torch.Tensor]
) -> Iterator[None]:
    """Within the block, the matrices named `names` hold `rounded(m)`; their float weights after."""
    targets = [matrices[name] for name in names]
    saved = [getattr(m.module, m.attribute) for m in targets]
    try:
        with torch.no_grad():
            for m in targets:
                m.replace(rounded(m))
        yield
    finally:
        for m, original in zip(targets, saved, strict=True):
            setattr(m.module, m.attribute, original)


def check_inputs(source: ResolvedModel, params: SensitivityParams, corpus: Corpus) -> None:
    divergence.check_inputs(source, params, corpus)


def run_method(
    model: QuantizedModel,
    params: SensitivityParams,
    corpus: Corpus,
    source: ResolvedModel,
    backend: Backend,
    method_params: MethodParams,
) -> list[tuple]:
    """The eval-registry entry point of an eval that needs the method (evals/registry.py): the map of
    `backend` at `method_params`, and the KLD of the trial's fully quantized `model` beside it."""
    whole = divergence.evaluate(model, corpus, params, source)
    start = time.perf_counter()
    floor, damages = map_units(backend, method_params, source, corpus, params, model.device)
    rows: list[tuple] = [
        (ALL_KLD, float(whole.kld.mean()), "nats"),
        (FLOAT_KLD, floor, "nats"),
        ("units_mapped", len(damages), "units"),
        ("map_seconds", time.perf_counter() - start, "s"),
    ]
    for d in damages:
        rows += [(UNIT_KLD, d.kld_mean, "nats", d.unit), (UNIT_TOP1, d.top1_agreement, "%", d.unit)]
    return rows
