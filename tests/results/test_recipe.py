"""Bits per unit from sensitivity maps: the greedy allocation, its byte budget, and the formats it emits."""

import pytest

from quantbench.errors import QuantbenchError
from quantbench.results.recipe import (
    Recipe,
    UnitOption,
    allocate,
    gptqmodel_dynamic,
    llama_cpp_tensor_types,
    method_string,
)

# Two units; b1 is damaged far more by low bits than b0.
OPTIONS = [
    UnitOption("model.layers.0", 2, 100, 0.30), UnitOption("model.layers.0", 4, 180, 0.05),
    UnitOption("model.layers.0", 8, 340, 0.0), UnitOption("model.layers.1", 2, 100, 2.0),
    UnitOption("model.layers.1", 4, 180, 0.2), UnitOption("model.layers.1", 8, 340, 0.01),
]  # fmt: skip


@pytest.mark.parametrize("budget", [200, 279, 280, 359, 360, 519, 520, 680, 10_000])
def test_the_recipe_never_exceeds_its_budget_in_bytes(budget):
    recipe = allocate(OPTIONS, budget)
    sizes = {(o.unit, o.bits): o.bytes for o in OPTIONS}
    assert recipe.unit_bytes == sum(sizes[u, b] for u, b in recipe.bits.items()) <= budget


def test_the_most_sensitive_unit_gets_the_bytes_first():
    assert allocate(OPTIONS, 280).bits == {"model.layers.0": 2, "model.layers.1": 4}
    assert allocate(OPTIONS, 360).bits == {"model.layers.0": 4, "model.layers.1": 4}
    assert allocate(OPTIONS, 680).bits == {"model.layers.0": 8, "model.layers.1": 8}


def test_a_budget_below_the_smallest_size_fails_in_one_line():
    message = r"^budget of 199 bytes is below the smallest possible size: 200 bytes with every unit at 2 bits$"
    with pytest.raises(QuantbenchError, match=message):
        allocate(OPTIONS, 199)


def test_maps_of_different_units_are_refused():
    with pytest.raises(QuantbenchError, match="the maps do not all measure the same units"):
        allocate(OPTIONS[:-1], 1000)


RECIPE = Recipe({"model.layers.0": 4, "model.layers.1": 8, "model.layers.2": 4, "model.layers.3": 3}, 0, 0, 0.0)


def test_the_quantbench_method_string_runs_the_recipe():
    text = method_string(
        "rtn", {"bits": 4, "group_size": 32, "skip": ["lm_head", "model.layers.0.mlp.up_proj"]}, RECIPE
    )
    overrides = "layer_bits=model.layers.1:8+model.layers.3:3"
    assert text == f"rtn:bits=4,group_size=32,{overrides},skip=lm_head+model.layers.0.mlp.up_proj"


def test_gptqmodel_reads_the_dynamic_overrides():
    dynamic = gptqmodel_dynamic(RECIPE)
    from gptqmodel.quantization.config import dynamic_get

    assert dynamic_get(dynamic, "model.layers.1.mlp.down_proj", "bits", 4) == 8
    assert dynamic_get(dynamic, "model.layers.3.self_attn.q_proj", "bits", 4) == 3
    assert dynamic_get(dynamic, "model.layers.13.self_attn.q_proj", "bits", 4) == 4
    assert dynamic_get(dynamic, "model.layers.0.self_attn.q_proj", "bits", 4) == 4


def test_llama_cpp_tensor_types_name_gguf_tensors():
    assert llama_cpp_tensor_types(RECIPE) == ["--tensor-type", r"blk\.1\.=q8_0", "--tensor-type", r"blk\.3\.=q3_k"]
    projections = Recipe(
        {"model.layers.2.self_attn.v_proj": 8, "model.layers.2.mlp.up_proj": 4, "x.0.mlp.up_proj": 4}, 0, 0, 0
    )
    assert llama_cpp_tensor_types(projections) == ["--tensor-type", r"blk\.2\.attn_v\.weight=q8_0"]
