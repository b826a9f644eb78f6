"""One plan from the user's input: the breakdown and, for a chosen GPU, how much more it can take.

`quantbench plan` and the dashboard's Planner tab both go through `make_plan`, so the two check
their input in the same order and report the same numbers; each only formats the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from quantbench.planner.estimate import Estimate, Workload, estimate, largest_batch, largest_context
from quantbench.planner.finetune import Lora, finetune_estimate
from quantbench.planner.formats import weight_format
from quantbench.planner.gpus import Gpu, find_gpu
from quantbench.planner.source import load_architecture


@dataclass(frozen=True)
class Plan:
    """The estimate, where the model's config came from, and, only when a GPU was chosen, its
    headroom (negative: short) and the largest context and batch that fit it (0: nothing fits)."""

    estimate: Estimate
    source: str
    gpu: Gpu | None = None
    headroom: int | None = None
    largest_context: int | None = None
    largest_batch: int | None = None


def make_plan(
    model: str,
    method: str,
    params: dict[str, Any],
    workload: Workload,
    gpu: str | None,
    finetune: Lora | None = None,
) -> Plan:
    """Plan `model` quantized by `method` with `params` for `workload`, on catalog GPU `gpu` if given;
    with `finetune`, a LoRA training step on that base (the workload's context is the sequence length).

    Every input is checked before the estimate, so bad input (a QuantbenchError) comes before a
    caller has shown anything; the largest context and batch are binary searches, done only
    when a GPU asks for them.
    """
    fmt = weight_format(method, params, workload.device)
    arch, source = load_architecture(model)
    workload.validate()
    if finetune is not None:
        finetune.validate()
    chosen = find_gpu(gpu) if gpu else None
    price = estimate if finetune is None else partial(finetune_estimate, lora=finetune)
    est = price(arch, fmt, workload)
    if chosen is None:
        return Plan(est, source)
    return Plan(
        est,
        source,
        chosen,
        headroom=chosen.memory_bytes - est.total,
        largest_context=largest_context(arch, fmt, workload, chosen, price),
        largest_batch=largest_batch(arch, fmt, workload, chosen, price),
    )
