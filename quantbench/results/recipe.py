"""A mixed-precision recipe from sensitivity maps: which bits each unit gets under a byte budget.

Inputs: maps of one model and method at several bit widths (evals/sensitivity.py; e.g. rtn at 3, 4
and 8 bits), and the exact stored bytes of each unit at each width (the method's layout, the same
formula its trials' weight_bytes count). Every unit starts at the narrowest width; then, greedily,
the upgrade (one unit to a wider width) that removes the most KLD per extra byte and still fits the
budget is taken, until none fits or none helps. A unit's damage is its map KLD above the map's
float floor; damages are taken to add up (the eval's `all_kld_mean` says how far that holds).

Emitted in the formats tools take: quantbench's `layer_bits` (rtn, hqq and triton run it as a
trial), GPTQModel's `dynamic` overrides (a dict of module-name regexes, `+:` to override and `-:` to
skip, the first match winning, GPTQModel 7.6 `quantization/config.py`), and llama-quantize's
`--tensor-type REGEX=TYPE` arguments (tensor names `blk.N.attn_q.weight`, matched with
`std::regex_search`, tools/quantize/README.md). llama-cpp-python 0.3.36 can take the same overrides
without the binary: `llama_model_quantize_params.tt_overrides`, an array of (pattern, ggml_type).
The GGUF types are the k-quants nearest in bits, not the measured method: a starting point there.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from quantbench.backends.unit_bits import format_layer_bits
from quantbench.errors import QuantbenchError
from quantbench.evals.sensitivity import block_of, group_units
from quantbench.results.sensitivity_maps import one_map, unit_maps

# HF projection name -> GGUF tensor name (llama.cpp's convert_hf_to_gguf tensor map, llama family).
GGUF_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "mlp.experts.gate_up_proj": "ffn_(gate|up)_exps",
    "mlp.experts.down_proj": "ffn_down_exps",
}  # fmt: skip
GGUF_TYPES = {2: "q2_k", 3: "q3_k", 4: "q4_k", 5: "q5_k", 6: "q6_k", 8: "q8_0"}


@dataclass(frozen=True)
class UnitOption:
    """One unit at one bit width: its stored bytes and its damage (KLD above the floor, nats)."""

    unit: str
    bits: int
    bytes: int
    damage: float


@dataclass(frozen=True)
class Recipe:
    bits: dict[str, int]  # unit -> bits, in model order
    unit_bytes: int  # stored bytes of every unit's matrices at its bits
    budget: int
    damage: float  # sum of the units' damages: the recipe's predicted KLD above the floor

    @property
    def base_bits(self) -> int:
        """The most common width (ties: the narrowest): the method's `bits`, the others its overrides."""
        counts = Counter(self.bits.values())
        return min(counts, key=lambda b: (-counts[b], b))

    def layer_bits(self) -> str:
        return format_layer_bits({u: b for u, b in self.bits.items() if b != self.base_bits})


def allocate(options: list[UnitOption], budget: int) -> Recipe:
    """Bits per unit whose stored bytes are at most `budget`, greedily by damage removed per extra byte."""
    by_unit: dict[str, dict[int, UnitOption]] = {}
    for option in options:
        by_unit.setdefault(option.unit, {})[option.bits] = option
    widths = sorted({o.bits for o in options})
    missing = [u for u, o in by_unit.items() if set(o) != set(widths)]
    if missing:
        raise QuantbenchError(f"the maps do not all measure the same units; {missing[0]} lacks some of {widths} bits")
    chosen = {unit: min(o) for unit, o in by_unit.items()}
    spent = sum(by_unit[u][b].bytes for u, b in chosen.items())
    if spent > budget:
        raise QuantbenchError(
            f"budget of {budget} bytes is below the smallest possible size: {spent} bytes with every unit at "
            f"{widths[0]} bits"
        )
    while True:
        best, best_ratio = None, 0.0
        for unit, bits in chosen.items():
            now = by_unit[unit][bits]
            for option in by_unit[unit].values():
                extra = option.bytes - now.bytes
                gain = now.damage - option.damage
                if option.bits > bits and extra <= budget - spent and gain > 0 and gain / max(extra, 1) > best_ratio:
                    best, best_ratio = option, gain / max(extra, 1)
        if best is None:
            break
        spent += best.bytes - by_unit[best.unit][chosen[best.unit]].bytes
        chosen[best.unit] = best.bits
    damage = sum(by_unit[u][b].damage for u, b in chosen.items())
    return Recipe(chosen, spent, budget, damage)


@dataclass(frozen=True)
class PlannedRecipe:
    """A recipe for one model and method, with what a trial of it will store."""

    method: str
    params: dict  # the maps' method parameters, as a trial key dumps them
    recipe: Recipe
    unit_weights: int  # weights in the mapped units
    weight_bytes: int  # the whole model's, as the recipe's trial counts them

    def method_string(self) -> str:
        return method_string(self.method, self.params, self.recipe)


def from_maps(
    frame: pd.DataFrame, keys: list[str], avg_bits: float | None = None, weight_bytes: int | None = None
) -> PlannedRecipe:
    """The recipe from the stored maps whose trial keys start with `keys` (one model, method and kind
    of unit; one map per bit width) under a budget of `avg_bits` stored bits per mapped weight (codes
    and scales) or of `weight_bytes` for the whole model. Each unit's bytes at each width come from
    the method's layout, the formula its trials' weight_bytes count, over the matrices of the model."""
    from quantbench import models
    from quantbench.backends.registry import get_backend
    from quantbench.engines.torch_model import weight_bytes as module_bytes
    from quantbench.spec import ModelRef

    maps = unit_maps(frame)
    chosen = pd.concat([one_map(maps, key) for key in keys])
    for column in ("model_ref", "method", "units"):
        if chosen[column].nunique() != 1:
            raise QuantbenchError(
                f"the maps differ in {column}: {', '.join(sorted(map(str, chosen[column].unique())))}"
            )
    first = chosen.iloc[0]
    backend = get_backend(first["method"])
    stored = json.loads(frame.loc[frame["trial_key"] == first["trial_key"], "params_json"].iloc[0])
    params = backend.Params.model_validate(stored)
    module, matrices = backend.float_model(models.resolve(ModelRef(first["model_ref"])), params, "cpu")
    grouped = group_units(list(matrices), first["units"])
    options = []
    for row in chosen.itertuples():
        layout = backend.layout(params.model_copy(update={"bits": int(row.bits)}), "cpu")
        size = sum(m.count * layout.linear_bytes(m.rows, m.cols) for m in (matrices[n] for n in grouped[row.unit]))
        options.append(UnitOption(row.unit, int(row.bits), size, max(row.kld - row.floor, 0.0)))
    numel = sum(m.numel for m in matrices.values())
    rest = module_bytes(module) - sum(m.numel * m.matrices().element_size() for m in matrices.values())
    budget = math.floor(avg_bits * numel / 8) if avg_bits is not None else weight_bytes - rest
    recipe = allocate(options, budget)
    canonical = params.model_dump(mode="json", exclude_defaults=True)
    return PlannedRecipe(backend.name, canonical, recipe, numel, rest + recipe.unit_bytes)


def method_string(method: str, params: dict, recipe: Recipe) -> str:
    """The quantbench method that runs the recipe as a trial: the map's parameters, `bits` the base
    width and `layer_bits` the rest."""
    params = {k: v for k, v in params.items() if k not in ("bits", "nbits", "layer_bits")}
    params["bits"] = recipe.base_bits
    if recipe.layer_bits():
        params["layer_bits"] = recipe.layer_bits()
    return method + ":" + ",".join(f"{k}={_text(v)}" for k, v in sorted(params.items()))


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return str(value)


def gptqmodel_dynamic(recipe: Recipe) -> dict[str, dict[str, int]]:
    """GPTQModel's `dynamic` for the units off the base width (the base is QuantizeConfig's `bits`)."""
    return {
        f"+:^{re.escape(unit)}(\\.|$)": {"bits": bits} for unit, bits in recipe.bits.items() if bits != recipe.base_bits
    }


def llama_cpp_tensor_types(recipe: Recipe) -> list[str]:
    """llama-quantize arguments for the units off the base width (the base is the type argument,
    e.g. q4_k_m for 4 bits); a unit with no GGUF name (an untied head) is left to llama.cpp's choice."""
    args = []
    for unit, bits in recipe.bits.items():
        if bits == recipe.base_bits:
            continue
        block = block_of(unit)
        index = block.rpartition(".")[2]
        if not index.isdigit():
            continue
        projection = unit[len(block) + 1 :]
        if projection and projection not in GGUF_TENSORS:
            continue
        tensor = f"\\.{GGUF_TENSORS[projection]}\\.weight" if projection else "\\."
        args += ["--tensor-type", f"blk\\.{index}{tensor}={GGUF_TYPES.get(bits, 'q8_0')}"]
    return args


def render(method: str, params: dict, recipe: Recipe) -> str:
    """The recipe in every format, as the CLI prints it."""
    return "\n".join(
        [
            f"quantbench: {method_string(method, params, recipe)}",
            f"gptqmodel dynamic (bits={recipe.base_bits}): {json.dumps(gptqmodel_dynamic(recipe))}",
            f"llama-quantize (type {GGUF_TYPES.get(recipe.base_bits, '?')}): "
            + " ".join(f'"{a}"' if a.startswith("blk") else a for a in llama_cpp_tensor_types(recipe)),
        ]
    )
