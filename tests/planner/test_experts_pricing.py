"""The planner prices what a method really quantizes on a mixture-of-experts model: routed experts
(transformers 5's fused 3-D tensors) packed where the method quantizes them, in the compute dtype
where it replaces nn.Linear layers only; the prediction agrees with the trial's weight_bytes."""

from __future__ import annotations

import pytest

from quantbench import models
from quantbench.backends.registry import get_backend
from quantbench.planner.config import architecture_from_config, read_config_file
from quantbench.planner.estimate import Workload, estimate, weight_bytes
from quantbench.planner.formats import weight_format
from quantbench.planner.presets import preset
from quantbench.planner.weights import weight_groups
from quantbench.spec import ModelRef, validate_params


@pytest.fixture(scope="module")
def tiny_mixtral(tiny_mixtral_dir) -> models.ResolvedModel:
    return models.resolve(ModelRef(str(tiny_mixtral_dir)))


@pytest.mark.parametrize(("method", "params"), [("rtn", {}), ("triton", {}), ("torchao", {"compute_dtype": "float32"})])
def test_the_prediction_is_the_measured_weight_bytes(tiny_mixtral, method, params):
    backend = get_backend(method)
    model = backend.quantize(tiny_mixtral, validate_params(backend.Params, params, method), "cpu")
    arch = architecture_from_config(read_config_file(tiny_mixtral.path / "config.json"), "tiny-mixtral")
    fmt = weight_format(method, {"compute_dtype": "float32", **params}, "cpu")
    assert weight_bytes(arch, fmt).total == model.weight_bytes


def test_experts_are_packed_only_by_methods_that_quantize_them():
    mixtral = preset("mixtral-8x7b")
    rtn, hqq = weight_format("rtn", {"bits": 4}), weight_format("hqq", {"bits": 4})
    assert rtn.quantizes_experts and not hqq.quantizes_experts
    experts = sum(g.numel for g in weight_groups(mixtral) if g.kind == "experts")
    assert weight_bytes(mixtral, hqq).kept_params > experts > weight_bytes(mixtral, rtn).kept_params
    kept = {c.name: c.note for c in estimate(mixtral, hqq, Workload(context=2048)).components}["weights kept"]
    assert kept.startswith(f"{weight_bytes(mixtral, hqq).kept_params / 1e9:.3f} B (experts, ")
