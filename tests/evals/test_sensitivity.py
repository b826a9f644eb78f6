"""The per-unit sensitivity map on the tiny random model."""

import pytest

from quantbench.backends.registry import get_backend
from quantbench.errors import QuantbenchError
from quantbench.evals import divergence, sensitivity
from quantbench.evals.sensitivity import SensitivityParams, block_of, group_units
from quantbench.spec import validate_params

PARAMS = SensitivityParams(seq_len=64, max_tokens=256)


def method(name: str, **raw):
    backend = get_backend(name)
    return backend, validate_params(backend.Params, raw, f"method {name}")


def test_units_are_blocks_or_the_matrices_within_them():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.experts.down_proj"]
    assert block_of(names[2]) == "model.layers.1" and block_of("lm_head") == "lm_head"
    assert group_units(names, "blocks") == {"model.layers.0": names[:2], "model.layers.1": names[2:]}
    assert list(group_units(names, "projections")) == names


def test_quantizing_no_unit_gives_zero_divergence(source, corpus):
    backend, params = method("rtn", bits=4, group_size=32)
    floor, damages = sensitivity.map_units(backend, params, source, corpus, PARAMS, "cpu", only=[])
    assert floor == 0.0 and damages == []


def test_a_units_entry_equals_a_trial_that_quantizes_only_that_unit(source, corpus):
    name, raw = "rtn", {"bits": 3, "group_size": 32}
    backend, params = method(name, **raw)
    _, damages = sensitivity.map_units(backend, params, source, corpus, PARAMS, "cpu")
    assert [d.unit for d in damages] == ["model.layers.0", "model.layers.1"]
    _, alone = method(name, **raw, layer_bits="model:float+model.layers.1:" + str(raw["bits"]))
    direct = divergence.evaluate(backend.quantize(source, alone, "cpu"), corpus, PARAMS, source)
    assert damages[1].kld_mean == pytest.approx(float(direct.kld.mean()), rel=1e-6, abs=1e-9)
    assert damages[1].top1_agreement == pytest.approx(100 * direct.top1_agree / len(direct.kld))
    assert all(d.kld_mean > 0 for d in damages)


def test_hqq_maps_each_projection(source, corpus):
    backend, params = method("hqq", bits=2, group_size=16, compute_dtype="float32")
    projections = PARAMS.model_copy(update={"units": "projections"})
    floor, damages = sensitivity.map_units(
        backend, params, source, corpus, projections, "cpu", only=["model.layers.0.mlp.down_proj"]
    )
    assert floor == 0.0 and damages[0].kld_mean > 0


def test_a_unit_that_does_not_exist_fails_in_one_line(source, corpus):
    backend, params = method("rtn")
    message = r"^no block named model\.layers\.9 in this model; units: model\.layers\.0, "
    with pytest.raises(QuantbenchError, match=message):
        sensitivity.map_units(backend, params, source, corpus, PARAMS, "cpu", only=["model.layers.9"])


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("bnb", {}, "bnb cannot be mapped unit by unit: it quantizes inside its library"),
        ("triton", {"source": "gptq"}, "triton with source=gptq cannot be mapped unit by unit"),
    ],
)
def test_methods_that_cannot_be_mapped_are_refused_in_one_line(name, raw, message):
    backend, params = method(name, **raw)
    with pytest.raises(QuantbenchError, match=f"^{message}") as err:
        sensitivity.check_method(backend, params)
    assert "\n" not in str(err.value)
