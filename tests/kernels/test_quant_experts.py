"""QuantExperts against the transformers experts module it replaces, on both QuantLinear paths.

The reference: the same experts module with each expert's matrices replaced by what its packed codes
stand for (RTN fake quantization), run by transformers' own forward. The Triton path runs under the
interpreter (conftest.py), forced with `force_triton`, on small shapes.
"""

import copy

import pytest
import torch

pytest.importorskip("triton")

from quantbench.backends.layers import weight_matrices
from quantbench.kernels.format import dequantize_codes, pack_linear_weight, quantize_rtn
from quantbench.kernels.quant_experts import QuantExperts
from quantbench.kernels.quant_linear import QuantLinear

# Mixtral: [gate; up] concatenated, (experts, out, in). GPT-OSS: interleaved gate/up columns, stored
# transposed (experts, in, out), biases, and its own clamped gate function.
ARCHITECTURES = ("mixtral", "gpt_oss")


def experts_module(arch: str) -> tuple[torch.nn.Module, list]:
    """The fused experts of a one-layer model of `arch`, found by layer discovery as the adapters find them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch, hidden_size=64, intermediate_size=32, num_local_experts=4,
                                  num_experts_per_tok=2, num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, vocab_size=32)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    matrices = [m for m in weight_matrices(model, skip=()).values() if m.kind == "experts"]
    experts = matrices[0].module
    for name, param in experts.named_parameters():  # random biases, so a dropped bias shows
        if name.endswith("_bias"):
            torch.nn.init.normal_(param, std=0.1)
    return experts, matrices


def pack(arch: str, bits: int, group_size: int) -> tuple[torch.nn.Module, QuantExperts]:
    """`arch`'s experts with fake-quantized matrices (the reference), and a QuantExperts of the same codes."""
    experts, matrices = experts_module(arch)
    fused = copy.deepcopy(experts)
    projections = {}
    for m in matrices:
        layers, fake = [], []
        for index in range(m.count):
            linear = m.linear(index)
            codes, scales, zeros = quantize_rtn(linear.weight, bits, group_size, False)
            fake.append(dequantize_codes(codes, scales, zeros, bits).T)
            bias = linear.bias.detach().clone() if linear.bias is not None else None
            layers.append(QuantLinear(pack_linear_weight(linear.weight, bits, group_size, False), bias))
        m.replace(torch.stack(fake))
        projections[m.attribute] = layers
    return experts, QuantExperts(fused, projections)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("triton", [False, True], ids=["reference", "triton"])
def test_quant_experts_compute_what_the_fused_module_computes_on_the_dequantized_weights(arch, triton, rng):
    reference, quantized = pack(arch, bits=4, group_size=32)
    for layer in quantized.modules():
        if isinstance(layer, QuantLinear):
            layer.force_triton = triton
    tokens = 5
    hidden = torch.randn(tokens, 64, generator=rng)
    top_k_index = torch.tensor([[0, 2], [2, 3], [1, 0], [3, 2], [0, 1]])
    top_k_weights = torch.rand(tokens, 2, generator=rng)
    with torch.no_grad():
        expected = reference(hidden, top_k_index, top_k_weights)
        out = quantized(hidden, top_k_index, top_k_weights)
    assert out.dtype == hidden.dtype and out.shape == (tokens, 64)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_quant_experts_hold_no_float_matrix_of_the_fused_module():
    _, quantized = pack("gpt_oss", bits=4, group_size=32)
    assert not [name for name, p in quantized.named_parameters() if p.dim() >= 2]
    assert len(quantized.gate_up_proj) == len(quantized.down_proj) == 4
