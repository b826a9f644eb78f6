"""Every CPU method × the architectures people run, as tiny random models built from configs here:
each cell quantizes with the share of matrix weights it should (`quantized_weight_fraction`, from the
quantized model), or is refused before any weight is read, in one line naming the architecture and
the layer type.

Block matrices (what the fraction counts; embeddings and the output head are not in it), for the
configs below (hidden 64, 4 heads of 16, 4 KV heads: AWQ's clip search takes outputs in blocks of 64,
2 layers):
- dense (Llama, Qwen2, Mistral, Phi-3, Gemma 2, GPT-2): all of them linear layers (GPT-2: Conv1D);
- Mixtral: attention 32 768 weights in nn.Linear, experts 98 304 in MixtralExperts (2 layers × 4
  experts × gate_up 128×64 + down 64×64), routers 512;
- Qwen2-MoE: attention 32 768 and shared expert 24 576 in nn.Linear, its gate 128 (an nn.Linear
  router), experts 98 304, routers 512.

gguf takes GGUF files only: every transformers directory is refused (converting one needs llama.cpp's
convert_hf_to_gguf.py, which the llama-cpp-python wheel lacks), and its cells are tiny GGUFs written
here instead (tests/tiny_gguf.py): a Llama and a Mixtral-style MoE, as llama.cpp's converter lays them out
(the MoE is refused as a source: transformers cannot read its experts into the float reference).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from architecture_cells import (
    ARCHITECTURES,
    GPTQMODEL_METHODS,
    METHODS,
    cell,
    gguf_cell,
    gptqmodel_cells,
    write_architectures,
    write_gguf_architectures,
)
from support import INPUT_IDS

from quantbench import models
from quantbench.backends.base import meta_model
from quantbench.backends.layers import all_matrices, weight_matrices
from quantbench.backends.registry import get_backend
from quantbench.errors import QuantbenchError
from quantbench.spec import validate_params

ATTENTION = 2 * 4 * 64 * 64
EXPERTS = 2 * 4 * (128 * 64 + 64 * 64)
ROUTERS = 2 * 4 * 64
SHARED_EXPERT, SHARED_GATE = 2 * 3 * 64 * 64, 2 * 64
MIXTRAL = ATTENTION + EXPERTS + ROUTERS
GPT2 = 2 * (4 * 64 * 64 + 2 * 256 * 64)  # c_attn, c_proj; c_fc, mlp.c_proj
QWEN2_MOE = ATTENTION + SHARED_EXPERT + SHARED_GATE + EXPERTS + ROUTERS

# Fractions of the MoE models' block matrix weights each kind of method stores in low precision.
ALL_BUT_ROUTERS = {
    "mixtral": (ATTENTION + EXPERTS) / MIXTRAL,
    "qwen2_moe": (QWEN2_MOE - ROUTERS - SHARED_GATE) / QWEN2_MOE,
}
LINEAR_ONLY = {"mixtral": ATTENTION / MIXTRAL, "qwen2_moe": (ATTENTION + SHARED_EXPERT) / QWEN2_MOE}
# Libraries that convert every nn.Linear but the head also convert Qwen2-MoE's shared-expert gate.
EVERY_LINEAR = {"mixtral": ATTENTION / MIXTRAL, "qwen2_moe": (ATTENTION + SHARED_EXPERT + SHARED_GATE) / QWEN2_MOE}


def refused(method: str, library_kinds: str) -> str:
    return f"^{method} cannot quantize GPT2LMHeadModel: its weight matrices are in Conv1D layers, and {method} " \
           f"quantizes only {library_kinds}$"  # fmt: skip


def awq_fails(arch: str, reason: str) -> str:
    return rf"^awq cannot quantize {arch}: GPTQModel [0-9.]+'s AWQ {reason}$"


def has_avx512bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return has_avx512bf16()


def bnb4_qwen2_moe() -> float | str:
    """bitsandbytes' 4-bit CPU gemv (AVX512-BF16) takes outputs in blocks of 32; the shared-expert gate has 1."""
    if not has_avx512bf16():
        return EVERY_LINEAR["qwen2_moe"]
    return (r"^bnb 4-bit cannot run Qwen2MoeForCausalLM on this CPU: its Linear "
            r"model\.layers\.0\.mlp\.shared_expert_gate has 1 outputs, and the AVX512-BF16 gemv needs a multiple "
            r"of 32 \(use bits=8\)$")  # fmt: skip


def expected(method: str, arch: str) -> float | str:
    """The cell: the quantized_weight_fraction, or the refusal (a regex)."""
    name = method.partition(":")[0]
    if name == "baseline":
        return 0.0
    if name == "gguf":
        return r"^gguf needs a GGUF source \(embedded:NAME or a \.gguf file\), not \w+'s transformers directory "
    if name == "awq" and arch == "gpt2":  # its scale search reads weights as (out, in)
        return refused(name, "fused experts, nn.Linear layers")
    if name == "awq" and arch == "phi3":
        return awq_fails("Phi3ForCausalLM", r"fails packing the fused qkv_proj \(KeyError 'q_zeros' in .*\)")
    if name in ("rtn", "triton", "gptq", "awq"):  # each expert too (triton packs each; GPTQModel defuses them)
        return ALL_BUT_ROUTERS.get(arch, 1.0)
    if name == "hqq":  # linear and Conv1D layers; no HQQLinear holds fused experts
        return LINEAR_ONLY.get(arch, 1.0)
    if method == "bnb:bits=4" and arch == "qwen2_moe":
        return bnb4_qwen2_moe()
    if name == "bnb":  # transformers' bnb integration converts Conv1D too
        return EVERY_LINEAR.get(arch, 1.0)
    if arch == "gpt2":
        return refused(name, "nn.Linear layers")
    return (LINEAR_ONLY if name == "dynamic" else EVERY_LINEAR).get(arch, 1.0)


@pytest.fixture(scope="module")
def architectures(tmp_path_factory, tiny_tokenizer) -> dict[str, models.ResolvedModel]:
    return write_architectures(tmp_path_factory.mktemp("architectures"), tiny_tokenizer)


def check(method: str, arch: str, result: dict) -> None:
    """`result` (an architecture_cells cell) is what `expected` says."""
    want = expected(method, arch)
    if isinstance(want, str):
        assert result["refusal"], f"expected a refusal matching {want!r}"
        assert "\n" not in result["refusal"]
        assert re.match(want, result["refusal"]), result["refusal"]
    else:
        assert result["refusal"] == "" and result["finite"] is True
        assert result["fraction"] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", METHODS)
def test_each_method_quantizes_its_share_of_each_architecture_or_refuses_it(architectures, method, arch):
    check(method, arch, cell(method, architectures[arch]))


@pytest.fixture(scope="module")
def gptqmodel_results(architectures) -> Callable[[str], list[dict]]:
    """method -> its cells in ARCHITECTURES order, each method run once per module."""
    pytest.importorskip("gptqmodel")
    done = {}

    def results(method: str) -> list[dict]:
        if method not in done:
            done[method] = gptqmodel_cells(method, [architectures[arch].path for arch in ARCHITECTURES])
        return done[method]

    return results


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", GPTQMODEL_METHODS)
def test_gptqmodel_quantizes_its_share_of_each_architecture(gptqmodel_results, method, arch):
    """GPTQModel calibrates (~2-5 s a cell here, ~15 s to start), so these cells run with the slow tier."""
    check(method, arch, gptqmodel_results(method)[ARCHITECTURES.index(arch)])


# The tiny Llama GGUF (hidden 256, 2 KV heads of 64, 2 layers) quantizes whole. transformers' GGUF loader
# reads the Mixtral-style file (4 experts of 512 in `ffn_*_exps`) as a dense Llama with its MLP initialised
# at random, so that file is refused as a source: every metric against its reference would be of another model.


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'quantbench[gguf]')")
    root = tmp_path_factory.mktemp("gguf-architectures")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUANTBENCH_CACHE", str(root / "cache"))
        yield write_gguf_architectures(root, tiny_tokenizer)


def test_gguf_quantizes_a_llama_gguf_whole(gguf_files):
    result = gguf_cell(gguf_files["llama"])
    assert result == {"refusal": "", "fraction": 1.0, "finite": True}


def test_a_gguf_whose_tensors_transformers_cannot_place_is_refused_as_a_source(gguf_files):
    result = gguf_cell(gguf_files["mixtral"])
    assert result["refusal"].startswith("transformers' GGUF loader cannot read 6 tensors of ")
    assert "model.layers.0.mlp.down_proj.weight" in result["refusal"] and "\n" not in result["refusal"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_block_matrices_are_counted_per_expert_and_the_head_is_left_out(architectures, arch):
    skeleton = meta_model(architectures[arch])
    matrices = all_matrices(skeleton)
    total = sum(m.numel for m in matrices.values())
    dense = GPT2 if arch == "gpt2" else ATTENTION + 2 * 3 * 64 * 128
    assert total == {"mixtral": MIXTRAL, "qwen2_moe": QWEN2_MOE}.get(arch, dense)
    head = skeleton.get_output_embeddings()
    assert all(m.module is not head for m in matrices.values())
    assert "lm_head" in weight_matrices(skeleton, skip=())


def test_conv1d_and_expert_matrices_are_seen_in_linear_orientation(architectures):
    gpt2 = models.load(architectures["gpt2"])
    attn = weight_matrices(gpt2)["transformer.h.0.attn.c_attn"]
    assert (attn.kind, attn.rows, attn.cols) == ("conv1d", 3 * 64, 64)
    assert torch.equal(attn.matrices()[0], gpt2.transformer.h[0].attn.c_attn.weight.T)
    mixtral = models.load(architectures["mixtral"])
    experts = weight_matrices(mixtral)["model.layers.0.mlp.experts.gate_up_proj"]
    assert (experts.kind, experts.count, experts.rows, experts.cols) == ("experts", 4, 128, 64)


def test_rtn_rounds_each_expert_with_its_own_groups(architectures):
    from quantbench.kernels.format import dequantize_codes, quantize_rtn

    base = models.load(architectures["mixtral"])
    q = get_backend("rtn").quantize(
        architectures["mixtral"], validate_params(get_backend("rtn").Params, {}, "rtn"), "cpu"
    )
    original = base.model.layers[1].mlp.experts.down_proj[3]
    codes, scales, zeros = quantize_rtn(original, 4, 64, False)
    assert torch.equal(q.module.model.layers[1].mlp.experts.down_proj[3], dequantize_codes(codes, scales, zeros, 4).T)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_triton_packs_each_expert_with_rtn_arithmetic(architectures, arch):
    """The packed experts compute what rtn's fake-quantized ones do: the same KL divergence from the
    unquantized model, up to float summation order."""
    from quantbench.kernels.quant_experts import QuantExperts

    def kld(logits: torch.Tensor, base: torch.Tensor) -> float:
        logp, logq = base.log_softmax(-1), logits.float().log_softmax(-1)
        return (logp.exp() * (logp - logq)).sum(-1).mean().item()

    with torch.inference_mode():
        base = models.load(architectures[arch])(input_ids=INPUT_IDS).logits.float()
    results = {}
    for name in ("rtn", "triton"):
        backend = get_backend(name)
        params = validate_params(backend.Params, {"bits": 4, "group_size": 32}, name)
        results[name] = backend.quantize(architectures[arch], params, "cpu")
    packed = [m for m in results["triton"].module.modules() if isinstance(m, QuantExperts)]
    assert len(packed) == 2 and results["triton"].kernel == "torch reference (no CUDA) on rtn codes"
    rtn, triton = (kld(results[name].logits(INPUT_IDS), base) for name in ("rtn", "triton"))
    assert rtn > 1e-5  # the rounding is visible, so equal divergences say the same arithmetic ran
    assert triton == pytest.approx(rtn, rel=1e-6)


def test_triton_packs_each_expert_from_hqq_codes(architectures):
    result = cell("triton:source=hqq,group_size=32", architectures["qwen2_moe"])
    assert result["refusal"] == "" and result["finite"] is True
    assert result["fraction"] == pytest.approx(ALL_BUT_ROUTERS["qwen2_moe"], abs=1e-12)


def test_triton_refuses_experts_it_cannot_read_codes_for(architectures):
    backend = get_backend("triton")
    params = validate_params(backend.Params, {"source": "gptq"}, "triton")
    assert backend.refusal(architectures["mixtral"], params, "cpu") == (
        "triton source=gptq cannot pack MixtralForCausalLM's MixtralExperts model.layers.0.mlp.experts.gate_up_proj: "
        "GPTQModel saves fused experts as per-expert layers the converter does not read (use source=rtn or hqq, "
        "or skip them)"
    )
    skip = "lm_head+model.layers.0.mlp.experts+model.layers.1.mlp.experts"
    params = validate_params(backend.Params, {"source": "gptq", "skip": skip}, "triton")
    assert backend.refusal(architectures["mixtral"], params, "cpu") == ""


def test_an_unknown_skip_name_is_refused(architectures):
    with pytest.raises(QuantbenchError, match=r"^skip names no weight matrix in this model: model\.layers\.0\.mlp$"):
        weight_matrices(meta_model(architectures["mixtral"]), skip=("model.layers.0.mlp",))
