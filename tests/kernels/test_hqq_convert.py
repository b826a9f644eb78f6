"""The HQQ converter: hqq's own layers (hqq 0.2.8) in, our packed format out.

A model quantized by hqq with a float32 compute dtype gives the same logits through hqq itself,
through our reference path and through the Triton kernels (interpreter, conftest.py). hqq and our
reference both compute (W_q - zero) * scale in fp32, so their weights agree bit for bit.
"""

import pytest
import torch
from support import INPUT_IDS
from torch import nn

pytest.importorskip("triton")
hqq_quantize = pytest.importorskip("hqq.core.quantize")

from quantbench.backends.hqq import HqqBackend  # noqa: E402
from quantbench.errors import QuantbenchError  # noqa: E402
from quantbench.kernels import reference  # noqa: E402
from quantbench.kernels.hqq import convert_hqq  # noqa: E402
from quantbench.kernels.quant_linear import QuantLinear  # noqa: E402
from quantbench.spec import validate_params  # noqa: E402

HQQLinear, BaseQuantizeConfig = hqq_quantize.HQQLinear, hqq_quantize.BaseQuantizeConfig


def hqq_linear(nbits: int, group_size: int | None, dtype=torch.float32, axis: int = 1, bias: bool = True, **config):
    torch.manual_seed(nbits)
    linear = nn.Linear(128, 64, bias=bias)
    quant_config = BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis, **config)
    return HQQLinear(linear, quant_config, compute_dtype=dtype, device="cpu")


@pytest.mark.parametrize(("nbits", "group_size"), [(2, 32), (3, 32), (3, 64), (4, 64), (4, None), (8, 16)])
def test_layer_weights_are_hqqs_exactly(nbits, group_size, relative_error):
    """3 bits exercises hqq's 10-codes-per-int32 packing and its padded rows; 4 bits its split
    nibbles; group None one group per row."""
    layer = hqq_linear(nbits, group_size)
    quant = QuantLinear.from_hqq(layer)
    assert quant.kernel.endswith("on hqq codes") and quant.scales.dtype == torch.float32
    assert torch.equal(reference.dequantize(quant.packed).T, layer.dequantize())
    x = torch.randn(3, 128)
    expected = layer(x)
    torch.testing.assert_close(quant(x), expected, rtol=0, atol=1e-6)
    quant.force_triton = True
    assert relative_error(quant(x), expected) < 1e-5


def test_bf16_layer_within_hqqs_own_rounding():
    """bf16: hqq rounds (W_q - zero) and then the product to bf16; we compute in fp32 from the same
    bf16 scales and zeros, so each weight differs by at most ~1 bf16 ulp of each step (2**-8 relative)."""
    layer = hqq_linear(4, 32, dtype=torch.bfloat16)
    packed = convert_hqq(layer)
    assert packed.scales.dtype == packed.zeros.dtype == torch.bfloat16
    ours, theirs = reference.dequantize(packed).T, layer.dequantize().float()
    tolerance = 2 * 2**-8 * packed.scales.float().max() * 16
    assert (ours - theirs).abs().max() <= tolerance
    assert (ours - theirs).abs().max() > 0  # the two roundings are real: equality here would mean fp32 math


def test_quantized_and_stacked_scale_zero_are_dequantized():
    """Old checkpoints may hold 8-bit scales/zeros (quant_scale/quant_zero), or stack them in
    `zero_scale` (offload_meta). hqq 0.2 ignores those settings when it quantizes, so the layer is
    quantized by hand the way HQQLinear.quantize does when given them."""
    config = BaseQuantizeConfig(nbits=4, group_size=32, quant_zero=True, quant_scale=True)
    layer = HQQLinear(None, config, compute_dtype=torch.float32, device="cpu", initialize=False)
    layer.quantize(nn.Linear(128, 64).weight.data, **layer.quant_config)  # offload_meta popped by __init__
    assert layer.meta["quant_zero"] and layer.meta["quant_scale"] and "zero" not in layer.meta
    assert torch.equal(reference.dequantize(convert_hqq(layer)).T, layer.dequantize())
    plain = hqq_linear(4, 32)
    expected = plain.dequantize()
    plain.meta["zero_scale"] = torch.stack((plain.meta.pop("zero"), plain.meta.pop("scale")))
    assert torch.equal(reference.dequantize(convert_hqq(plain)).T, expected)


def test_unpacked_codes_convert():
    """hqq keeps the codes as floats, unpacked, when asked for bitpack=False (meta["packing"] None)."""
    config = BaseQuantizeConfig(nbits=4, group_size=32)
    config["weight_quant_params"]["bitpack"] = False
    layer = HQQLinear(nn.Linear(128, 64), config, compute_dtype=torch.float32, device="cpu")
    assert layer.meta["packing"] is None and layer.W_q.dtype == torch.float32
    assert torch.equal(reference.dequantize(convert_hqq(layer)).T, layer.dequantize())


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (lambda: hqq_linear(4, 32, axis=0), "hqq axis=0 groups run across output rows; only axis=1"),
        (lambda: hqq_linear(1, 32), r"hqq nbits=1 not supported; the packed format has \(2, 3, 4, 8\)"),
        (lambda: hqq_linear(5, 32), "hqq nbits=5 not supported"),
    ],
)
def test_layouts_the_format_cannot_hold_are_rejected(layer, message):
    with pytest.raises(QuantbenchError, match=message):
        convert_hqq(layer())


@pytest.mark.slow
@pytest.mark.parametrize("seq_len", [1, 12])  # gemv, split-K
def test_hqq_model_same_logits_through_hqq_reference_and_triton(resolved, seq_len):
    """The issue's "a model converted from one external method": hqq's own forward, our reference and
    the Triton kernels. Measured max |Δlogit| 0 (hqq vs reference) and ≤ 3.3e-7 (Triton, interpreter)
    with |logit| ≤ 0.7 (2026-11); bounds 1e-6 and 1e-5."""
    backend = HqqBackend()
    params = validate_params(backend.Params, {"nbits": 4, "group_size": 32, "compute_dtype": "float32"}, "hqq")
    module = backend.quantize(resolved, params, "cpu").module
    input_ids = INPUT_IDS[:1, :seq_len]
    with torch.inference_mode():
        through_hqq = module(input_ids=input_ids, use_cache=False).logits
        converted = 0
        for name, layer in list(module.named_modules()):
            if isinstance(layer, HQQLinear):
                parent, _, child = name.rpartition(".")
                setattr(module.get_submodule(parent), child, QuantLinear.from_hqq(layer))
                converted += 1
        assert converted == 14
        through_reference = module(input_ids=input_ids, use_cache=False).logits
        for layer in module.modules():
            if isinstance(layer, QuantLinear):
                layer.force_triton = True
        through_triton = module(input_ids=input_ids, use_cache=False).logits
    torch.testing.assert_close(through_reference, through_hqq, rtol=0, atol=1e-6)
    torch.testing.assert_close(through_triton, through_reference, rtol=0, atol=1e-5)
