"""The per-unit `layer_bits` parameter that rtn, hqq and triton share."""

import pytest
import torch
from support import INPUT_IDS

from quantbench.backends.registry import get_backend
from quantbench.backends.unit_bits import parse_layer_bits
from quantbench.errors import QuantbenchError
from quantbench.kernels.format import packed_bytes
from quantbench.spec import MethodSpec, validate_params


def quantize(resolved, method: str, **raw):
    backend = get_backend(method)
    return backend.quantize(resolved, validate_params(backend.Params, raw, f"method {method}"), "cpu")


def test_overrides_parse_and_spell_canonically():
    assert parse_layer_bits("model.layers.1:8+model:float") == {"model.layers.1": 8, "model": None}
    params = get_backend("rtn").Params(layer_bits=" model.layers.1:8 + model.layers.0.mlp:3")
    assert params.layer_bits == "model.layers.0.mlp:3+model.layers.1:8"


@pytest.mark.parametrize("method", ["rtn", "hqq", "triton"])
def test_default_leaves_the_label_unchanged(method):
    spec = MethodSpec.parse(f"{method}:bits=4")
    params = validate_params(get_backend(method).Params, spec.params, method)
    assert "layer_bits" not in params.model_dump(exclude_defaults=True)


@pytest.mark.parametrize(
    ("method", "text", "message"),
    [
        ("rtn", "model.layers.0", "layer_bits entry 'model.layers.0' is not UNIT:BITS"),
        ("rtn", "model.layers.0:9", "layer_bits gives model.layers.0 9 bits; this method stores 2, 3, 4, 5, 6, 7, 8"),
        ("triton", "model.layers.0:5", "layer_bits gives model.layers.0 5 bits; this method stores 2, 3, 4, 8"),
        ("hqq", "model.layers.0:4+model.layers.0:8", "layer_bits names model.layers.0 twice"),
    ],
)
def test_malformed_overrides_fail_in_one_line(method, text, message):
    with pytest.raises(QuantbenchError, match=r"^method") as err:
        validate_params(get_backend(method).Params, {"layer_bits": text}, f"method {method!r}")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["rtn", "hqq", "triton"])
def test_a_unit_that_does_not_exist_fails_in_one_line(resolved, method):
    message = r"^layer_bits names no quantized module of this model: model\.layers\.7$"
    with pytest.raises(QuantbenchError, match=message):
        quantize(resolved, method, layer_bits="model.layers.7:8")


def test_rtn_counts_each_unit_at_its_own_bits(resolved, baseline):
    q = quantize(resolved, "rtn", bits=3, group_size=32, layer_bits="model.layers.1:8+model.layers.0.mlp:float")
    expected = 0
    quantized = set()
    for name, layer in baseline[0].named_modules():
        if not isinstance(layer, torch.nn.Linear) or name == "lm_head" or name.startswith("model.layers.0.mlp."):
            continue
        bits = 8 if name.startswith("model.layers.1.") else 3
        expected += packed_bytes(*layer.weight.shape, bits, 32, False)
        quantized.add(id(layer.weight))
    expected += sum(4 * p.numel() for p in baseline[0].parameters() if id(p) not in quantized)
    assert q.weight_bytes == expected
    assert torch.equal(q.module.model.layers[0].mlp.up_proj.weight, baseline[0].model.layers[0].mlp.up_proj.weight)


@pytest.mark.parametrize("method", ["hqq", "triton"])
def test_library_methods_store_each_unit_at_its_own_bits(resolved, method):
    uniform = quantize(resolved, method, bits=4)
    mixed = quantize(resolved, method, bits=4, layer_bits="model.layers.1:8")
    block_only = quantize(resolved, method, bits=4, layer_bits="model:float+model.layers.1:8")
    assert uniform.weight_bytes < mixed.weight_bytes
    assert torch.isfinite(mixed.logits(INPUT_IDS)).all()
    assert 0 < block_only.coverage.quantized_matrices == uniform.coverage.quantized_matrices // 2
