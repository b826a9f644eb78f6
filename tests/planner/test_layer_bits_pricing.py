"""The planner prices a `layer_bits` recipe unit by unit, through the backend's own byte formula:
its prediction is the trial's measured weight_bytes, not the uniform width's."""

from __future__ import annotations

import pytest

from quantbench import models
from quantbench.backends.registry import get_backend
from quantbench.planner.config import architecture_from_config, read_config_file
from quantbench.planner.estimate import weight_bytes
from quantbench.planner.formats import weight_format
from quantbench.spec import ModelRef, validate_params

# A block, one projection inside a wider override (the longest unit wins), and a unit kept in float.
RECIPE = "model.layers.0:8+model.layers.0.mlp.down_proj:2+model.layers.1.self_attn:float"
MIXTRAL_RECIPE = "model.layers.0:8+model.layers.1.mlp.experts:2"
HQQ_RECIPE = "model.layers.0:8+model.layers.0.mlp.down_proj:2"


def _predicted_and_measured(path, method: str, params: dict) -> tuple[int, int]:
    backend = get_backend(method)
    source = models.resolve(ModelRef(str(path)))
    model = backend.quantize(source, validate_params(backend.Params, params, method), "cpu")
    arch = architecture_from_config(read_config_file(path / "config.json"), "tiny")
    return weight_bytes(arch, weight_format(method, params, "cpu")).total, model.weight_bytes


@pytest.mark.parametrize("method", ["rtn", "triton"])
def test_a_recipe_is_priced_as_the_trial_stores_it(tiny_model_dir, method):
    params = {"compute_dtype": "float32", "bits": 4}
    predicted, measured = _predicted_and_measured(tiny_model_dir, method, {**params, "layer_bits": RECIPE})
    assert predicted == measured != _predicted_and_measured(tiny_model_dir, method, params)[0]


def test_fused_experts_take_their_units_bits(tiny_mixtral_dir):
    params = {"compute_dtype": "float32", "bits": 4, "layer_bits": MIXTRAL_RECIPE}
    predicted, measured = _predicted_and_measured(tiny_mixtral_dir, "rtn", params)
    assert predicted == measured != _predicted_and_measured(tiny_mixtral_dir, "rtn", {**params, "layer_bits": ""})[0]


def test_hqq_recipe_is_off_by_the_metadata_uniform_is_off_by(tiny_model_dir):
    # The layout leaves out hqq's per-layer metadata (backends/layout.py), as many bytes at any width.
    params = {"compute_dtype": "float32", "bits": 4}
    recipe, recipe_measured = _predicted_and_measured(tiny_model_dir, "hqq", {**params, "layer_bits": HQQ_RECIPE})
    uniform, uniform_measured = _predicted_and_measured(tiny_model_dir, "hqq", params)
    assert recipe != uniform and recipe_measured - recipe == uniform_measured - uniform
