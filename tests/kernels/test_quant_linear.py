"""QuantLinear on both paths, whole models through both paths, and the GPTQ and AWQ converters.

The Triton path runs under the interpreter (conftest.py), forced with `force_triton`.
"""

import pytest
import torch
from packing_loops import awq_pack, gptq_pack
from torch import nn

pytest.importorskip("triton")

from quantbench import models
from quantbench.backends.triton import TritonBackend
from quantbench.errors import QuantbenchError
from quantbench.kernels import reference
from quantbench.kernels.awq import convert_awq
from quantbench.kernels.format import quantize_rtn
from quantbench.kernels.gptq import convert_gptq
from quantbench.kernels.quant_linear import REFERENCE_KERNEL, QuantLinear
from quantbench.spec import validate_params


def test_quant_linear_reference_path_is_a_linear_on_dequantized_weights(rng):
    linear = nn.Linear(128, 48, bias=True)
    layer = QuantLinear.from_linear(linear, bits=4, group_size=32, symmetric=False)
    assert layer.kernel == f"{REFERENCE_KERNEL} on rtn codes" and not layer.uses_triton
    x = torch.randn(2, 5, 128, generator=rng)
    dense = reference.dequantize(layer.packed).T
    torch.testing.assert_close(layer(x), nn.functional.linear(x, dense, linear.bias))
    assert sum(t.numel() * t.element_size() for t in layer.state_dict().values()) == layer.packed.nbytes() + 48 * 4
    assert "bits=4, group_size=32, symmetric=False" in repr(layer)


@pytest.mark.parametrize("shape", [(1, 1, 128), (3, 128), (2, 9, 128)])
def test_quant_linear_triton_path_matches_reference(shape, rng, relative_error):
    layer = QuantLinear.from_linear(nn.Linear(128, 64), bits=8, group_size=64, symmetric=True)
    x = torch.randn(*shape, generator=rng)
    expected = layer(x)
    layer.force_triton = True
    assert layer.kernel == "triton gemv/splitk/gemm (interpreter) on rtn codes"
    out = layer(x)
    assert out.shape == (*shape[:-1], 64)
    assert relative_error(out, expected) < 1e-5


def rtn_model(resolved, dtype: str = "float32"):
    backend = TritonBackend()
    params = validate_params(backend.Params, {"bits": 4, "group_size": 32, "dtype": dtype}, "method triton")
    return backend.quantize(resolved, params, "cpu").module


def logits_both_paths(module: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    layers = [m for m in module.modules() if isinstance(m, QuantLinear)]
    assert layers
    with torch.inference_mode():
        ref = module(input_ids=input_ids, use_cache=False).logits.float()
        for layer in layers:
            layer.force_triton = True
        out = module(input_ids=input_ids, use_cache=False).logits.float()
    return ref, out


@pytest.mark.slow
@pytest.mark.parametrize("seq_len", [1, 12, 72])  # gemv, split-K, gemm
def test_rtn_model_same_logits_on_both_paths(resolved, seq_len):
    """fp32 model: measured max |Δlogit| ≤ 2.1e-7 with |logit| ≤ 0.8 (interpreter, 2026-11); bound 1e-5."""
    ref, out = logits_both_paths(rtn_model(resolved), torch.arange(1, seq_len + 1).reshape(1, -1))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_rtn_model_fp16_same_logits_on_both_paths(resolved):
    """fp16 model: the kernels round dequantized weights to fp16 before tl.dot, the reference does
    not; measured max |Δlogit| 4.9e-4 with |logit| ≤ 0.7 (interpreter, 2026-11); bound 5e-3."""
    ref, out = logits_both_paths(rtn_model(resolved, "float16"), torch.arange(1, 13).reshape(1, -1))
    torch.testing.assert_close(out, ref, rtol=0, atol=5e-3)


# --- GPTQ ----------------------------------------------------------------------------------------


def synthetic_gptq(k: int, n: int, bits: int, group_size: int, act_order: bool, v1: bool, seed: int = 0):
    """GPTQ tensors with random codes/zeros/scales, and the dense (K, N) weight they stand for."""
    gen = torch.Generator().manual_seed(seed)
    groups = k // group_size
    codes = torch.randint(0, 2**bits, (k, n), generator=gen)
    zeros = torch.randint(1 if v1 else 0, 2**bits, (groups, n), generator=gen)  # v1 cannot store zero 0
    scales = (torch.rand(groups, n, generator=gen) * 0.01 + 1e-3).half()
    g_idx = torch.arange(k) // group_size
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    dense = (codes - zeros[g_idx]).float() * scales[g_idx].float()
    tensors = dict(
        qweight=gptq_pack(codes, bits, 0),
        qzeros=gptq_pack(zeros - 1 if v1 else zeros, bits, 1),
        scales=scales,
        g_idx=g_idx.to(torch.int32),
        bits=bits,
        zeros_minus_one=v1,
    )
    return tensors, dense


@pytest.mark.parametrize("v1", [True, False], ids=["gptq-v1", "gptq-v2"])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_layer_on_both_paths(bits, act_order, v1, rng, relative_error):
    """3 bits: GPTQ's qweight is already our layout and its qzeros the same bit stream along N."""
    tensors, dense = synthetic_gptq(256, 64, bits, 32, act_order, v1)
    layer = QuantLinear.from_gptq(**tensors)
    assert (layer.in_perm is not None) == act_order
    assert layer.kernel.endswith("on gptq codes")
    for m in (1, 7):
        x = torch.randn(m, 256, generator=rng)
        expected = x @ dense
        assert relative_error(layer(x), expected) < 1e-5
        layer.force_triton = True
        assert relative_error(layer(x), expected) < 1e-5
        layer.force_triton = False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(qzeros=torch.zeros(8, 4, dtype=torch.int32)), "inconsistent GPTQ shapes"),
        (dict(g_idx=torch.arange(256, dtype=torch.int32) % 7), "g_idx does not put exactly 32 rows in each of 8"),
        (dict(g_idx=torch.zeros(255, dtype=torch.int32)), r"g_idx must have shape \(256,\)"),
    ],
)
def test_gptq_inconsistent_tensors_rejected(change, message):
    tensors, _ = synthetic_gptq(256, 64, 4, 32, act_order=False, v1=True)
    with pytest.raises(QuantbenchError, match=message):
        convert_gptq(**{**tensors, **change})


def test_gptq_bits_outside_the_format_rejected():
    with pytest.raises(QuantbenchError, match=r"GPTQ bits=5 not supported; the packed format has \(2, 3, 4, 8\)"):
        convert_gptq(torch.zeros(5, 8, dtype=torch.int32), torch.zeros(1, 1), torch.zeros(1, 8), 5)


def gptq_of_linear(linear: nn.Linear, group_size: int, seed: int):
    """What GPTQ with act-order would store for RTN codes of `linear` (4-bit, v2 zeros), and the
    dense (N, K) weight those codes stand for."""
    k = linear.in_features
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    codes_p, scales, zeros = quantize_rtn(linear.weight[:, perm], 4, group_size, symmetric=False)
    codes = torch.empty_like(codes_p)
    codes[perm] = codes_p
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // group_size).to(torch.int32)
    dense = (codes.float() - zeros[g_idx].float()) * scales[g_idx].float()
    tensors = dict(
        qweight=gptq_pack(codes, 4, 0),
        qzeros=gptq_pack(zeros.to(torch.int64), 4, 1),
        scales=scales,
        g_idx=g_idx,
        bits=4,
        zeros_minus_one=False,
    )
    return tensors, dense.T


@pytest.mark.slow
def test_gptq_converted_model_same_logits_on_both_paths(resolved):
    """A tiny Llama whose linears come from GPTQ act-order tensors: both paths agree with each
    other and with the same model holding the dense weights those tensors stand for."""
    quantized = models.load(resolved)
    dense = models.load(resolved)
    targets = [n for n, m in quantized.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    for seed, name in enumerate(targets):
        parent, _, child = name.rpartition(".")
        tensors, weight = gptq_of_linear(quantized.get_submodule(name), 32, seed)
        setattr(quantized.get_submodule(parent), child, QuantLinear.from_gptq(**tensors))
        dense.get_submodule(name).weight.data = weight
    input_ids = torch.arange(1, 13).reshape(1, -1)
    with torch.inference_mode():
        expected = dense(input_ids=input_ids, use_cache=False).logits
    ref, out = logits_both_paths(quantized, input_ids)
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


# --- AWQ -----------------------------------------------------------------------------------------


def synthetic_awq(k: int, n: int, group_size: int, seed: int = 0):
    """AWQ GEMM tensors (packed by AutoAWQ's loop) with random codes/zeros/scales, and the dense
    (K, N) weight they stand for."""
    gen = torch.Generator().manual_seed(seed)
    groups = k // group_size
    codes = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(0, 16, (groups, n), generator=gen)
    scales = (torch.rand(groups, n, generator=gen) * 0.01 + 1e-3).to(torch.bfloat16)
    g = torch.arange(k) // group_size
    dense = (codes - zeros[g]).float() * scales[g].float()
    return dict(qweight=awq_pack(codes), qzeros=awq_pack(zeros), scales=scales), dense


@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_awq_layer_on_both_paths(group_size, rng, relative_error):
    tensors, dense = synthetic_awq(128, 64, 128 if group_size == -1 else group_size)
    layer = QuantLinear.from_awq(**tensors, group_size=group_size)
    assert layer.kernel.endswith("on awq codes") and layer.scales.dtype == torch.bfloat16
    torch.testing.assert_close(reference.dequantize(layer.packed), dense, rtol=0, atol=0)
    for m in (1, 7):
        x = torch.randn(m, 128, generator=rng)
        expected = x @ dense
        assert relative_error(layer(x), expected) < 1e-5
        layer.force_triton = True
        assert relative_error(layer(x), expected) < 1e-5
        layer.force_triton = False


def test_awq_inconsistent_tensors_rejected():
    tensors, _ = synthetic_awq(128, 64, 32)
    with pytest.raises(QuantbenchError, match="inconsistent AWQ shapes for group size 64"):
        convert_awq(**tensors, group_size=64)
