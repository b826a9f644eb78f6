import pytest
import torch
from support import INPUT_IDS

from quantbench.backends.rtn import RtnBackend
from quantbench.errors import QuantbenchError
from quantbench.kernels import reference
from quantbench.kernels.format import pack_linear_weight
from quantbench.spec import validate_params


def quantize(resolved, **raw):
    backend = RtnBackend()
    params = validate_params(backend.Params, raw, "method rtn")
    return backend.quantize(resolved, params, "cpu")


def expected_bytes(base: torch.nn.Module, bits: int, group_size: int, symmetric: bool, skip=("lm_head",)) -> int:
    """Packed format: `bits` per code, one fp16 scale (+ one fp16 zero if asymmetric) per group of
    each output row; everything else stays fp32."""
    total = 0
    quantized = set()
    for name, mod in base.named_modules():
        if isinstance(mod, torch.nn.Linear) and name not in skip:
            n_out, k_in = mod.weight.shape
            groups = 1 if group_size == -1 else k_in // group_size
            total += (n_out * k_in * bits + 7) // 8 + groups * n_out * 2 * (1 if symmetric else 2)
            quantized.add(id(mod.weight))
    return total + sum(4 * p.numel() for p in base.parameters() if id(p) not in quantized)


@pytest.mark.parametrize(
    ("bits", "group_size", "symmetric"),
    [(4, 32, False), (4, 64, True), (8, -1, True), (3, 16, False), (2, 32, True)],
)
def test_weight_bytes_match_packed_format(resolved, baseline, bits, group_size, symmetric):
    q = quantize(resolved, bits=bits, group_size=group_size, symmetric=symmetric)
    count = sum(p.numel() for p in baseline[0].parameters())
    assert q.weight_bytes == expected_bytes(baseline[0], bits, group_size, symmetric)
    assert q.bits_per_weight == pytest.approx(8 * q.weight_bytes / count)
    assert torch.isfinite(q.logits(INPUT_IDS)).all()
    assert f"w{bits} g{group_size}" in q.kernel


def test_fake_quant_weights_are_what_the_packed_format_holds(resolved, baseline):
    q = quantize(resolved, bits=4, group_size=32, symmetric=False)
    original = baseline[0].model.layers[0].mlp.down_proj.weight
    packed = pack_linear_weight(original, bits=4, group_size=32, symmetric=False)
    assert torch.equal(q.module.model.layers[0].mlp.down_proj.weight, reference.dequantize(packed).T)
    assert torch.equal(q.module.lm_head.weight, baseline[0].lm_head.weight)  # skipped by default


def test_8bit_closer_to_baseline_than_4bit(resolved, baseline):
    errors = {}
    for bits in (8, 4):
        logits = quantize(resolved, bits=bits, group_size=32).logits(INPUT_IDS)
        errors[bits] = (logits - baseline[1]).pow(2).mean().item()
    assert 0 < errors[8] < errors[4]


def test_empty_skip_list_quantizes_lm_head(resolved, baseline):
    q = quantize(resolved, bits=4, group_size=32, symmetric=True, skip="")
    assert q.weight_bytes == expected_bytes(baseline[0], 4, 32, True, skip=())
    assert not torch.equal(q.module.lm_head.weight, baseline[0].lm_head.weight)


def test_skip_list_parses_module_names_joined_with_plus():
    params = validate_params(RtnBackend.Params, {"skip": "lm_head+model.layers.0.mlp.up_proj"}, "method rtn")
    assert params.skip == ("lm_head", "model.layers.0.mlp.up_proj")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"bits": 1}, "bits: Input should be greater than or equal to 2"),
        ({"bits": "9"}, "bits: Input should be less than or equal to 8"),
        ({"group_size": 48}, "group_size: Value error, must be -1 (per channel) or a power of two ≥ 16"),
        ({"group_size": 8}, "power of two ≥ 16, got 8"),
        ({"symmetric": "maybe"}, "symmetric: Input should be a valid boolean"),
        ({"nbits": 4}, "nbits: unknown parameter"),
    ],
)
def test_invalid_params_fail_with_one_line(raw, message):
    with pytest.raises(QuantbenchError) as err:
        validate_params(RtnBackend.Params, raw, "method rtn")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_group_size_is_checked_before_any_weight_is_read(tiny_model_dir, tmp_path):
    """The check runs on the meta model: with the weights file gone, the error is still the group size."""
    import shutil

    from quantbench import models
    from quantbench.spec import ModelRef

    copy = shutil.copytree(tiny_model_dir, tmp_path / "model")
    resolved = models.resolve(ModelRef(str(copy)))
    for weights in copy.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(QuantbenchError, match=r"^group_size 128 does not divide in_features 64"):
        quantize(resolved, group_size=128)


def test_group_size_not_dividing_in_features_is_rejected(resolved):
    # The tiny Llama's attention and MLP inputs are 64 or 128 wide.
    with pytest.raises(QuantbenchError, match=r"^group_size 256 does not divide in_features 64 of layer model"):
        quantize(resolved, group_size=256)


def test_unknown_skip_name_is_rejected(resolved):
    with pytest.raises(QuantbenchError, match=r"skip names no weight matrix in this model: model\.lm_head"):
        quantize(resolved, skip="model.lm_head")
