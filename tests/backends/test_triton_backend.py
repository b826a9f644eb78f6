import importlib.util
import json

import pytest
import torch
from support import INPUT_IDS, build_tiny_llama

from quantbench import models
from quantbench.backends.awq import AwqBackend, AwqParams
from quantbench.backends.gptq import GptqBackend, GptqParams
from quantbench.backends.hqq import HqqBackend
from quantbench.backends.registry import get_backend
from quantbench.backends.rtn import RtnBackend
from quantbench.backends.triton import TritonBackend
from quantbench.errors import QuantbenchError
from quantbench.kernels import reference
from quantbench.kernels.format import pack_codes
from quantbench.kernels.quant_linear import REFERENCE_KERNEL, QuantLinear
from quantbench.spec import ModelRef, validate_params


def quantize(backend, resolved, **raw):
    params = validate_params(backend.Params, raw, f"method {backend.name}")
    return backend.quantize(resolved, params, "cpu")


@pytest.mark.parametrize(
    ("bits", "group_size", "symmetric"), [(4, 32, False), (8, 64, True), (2, -1, False), (3, 32, False)]
)
def test_packed_model_matches_rtn_fake_quant(resolved, bits, group_size, symmetric):
    """The reference path of the packed model and RTN's fake-quant weights are the same format:
    same bytes (one counted from real buffers, one from the formula), same logits."""
    raw = dict(bits=bits, group_size=group_size, symmetric=symmetric)
    packed = quantize(TritonBackend(), resolved, **raw)
    fake = quantize(RtnBackend(), resolved, **raw)
    linears = [n for n, m in packed.module.named_modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 14  # 2 layers × (q, k, v, o, gate, up, down); lm_head kept
    assert packed.kernel == f"{REFERENCE_KERNEL} on rtn codes"
    assert packed.weight_bytes == fake.weight_bytes
    assert packed.bits_per_weight == pytest.approx(fake.bits_per_weight)
    torch.testing.assert_close(packed.logits(INPUT_IDS), fake.logits(INPUT_IDS), rtol=1e-5, atol=1e-5)


def packed_format_bytes(module, bits: int, group_size: int, scale_bytes: int, symmetric: bool) -> int:
    """The packed format's size: codes at `bits` each, a scale (and a zero unless symmetric) of
    `scale_bytes` per group of each quantized layer, every other parameter (embeddings, norms,
    lm_head) in its float dtype."""
    total = 0
    for layer in module.modules():
        if isinstance(layer, QuantLinear):
            k_in, n_out = layer.in_features, layer.out_features
            groups = k_in // (k_in if group_size == -1 else group_size)
            total += k_in * n_out * bits // 8 + groups * n_out * scale_bytes * (1 if symmetric else 2)
    return total + sum(p.numel() * p.element_size() for p in module.parameters())


def float_linears(resolved, dtype: str = "float32") -> dict[str, torch.nn.Linear]:
    module = models.load(resolved, dtype=dtype)
    return {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


@pytest.mark.parametrize(("bits", "group_size", "symmetric"), [(4, 32, False), (3, -1, True)])
def test_rtn_source_runs_rtns_own_weights(resolved, bits, group_size, symmetric):
    """get_backend("triton") with source=rtn: every layer dequantizes to exactly the weights the rtn
    method computes with; weight bytes are the packed-format formula; the kernel says which path runs."""
    packed = quantize(get_backend("triton"), resolved, bits=bits, group_size=group_size, symmetric=symmetric)
    fake = quantize(get_backend("rtn"), resolved, bits=bits, group_size=group_size, symmetric=symmetric)
    layers = {n: m for n, m in packed.module.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 14
    for name, layer in layers.items():
        assert torch.equal(reference.dequantize(layer.packed), fake.module.get_submodule(name).weight.T)
    assert packed.weight_bytes == packed_format_bytes(packed.module, bits, group_size, 2, symmetric)
    assert packed.kernel == "torch reference (no CUDA) on rtn codes"


def test_hqq_source_runs_hqqs_own_weights(resolved):
    """source=hqq: every layer dequantizes to what hqq's own HQQLinear.dequantize gives for that layer
    (fp32 compute: bit for bit), with fp32 scales and zeros in the byte count."""
    pytest.importorskip("hqq")
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    ours = quantize(get_backend("triton"), resolved, source="hqq", bits=4, group_size=32)
    config = BaseQuantizeConfig(nbits=4, group_size=32, axis=1)
    checked = 0
    for name, linear in float_linears(resolved).items():
        theirs = HQQLinear(linear, config, compute_dtype=torch.float32, device="cpu", del_orig=False).dequantize()
        assert torch.equal(weights_of(ours.module.get_submodule(name)), theirs.T)
        checked += 1
    assert checked == 14
    assert ours.weight_bytes == packed_format_bytes(ours.module, 4, 32, 4, symmetric=False)
    assert ours.kernel == "torch reference (no CUDA) on hqq codes"


def test_rtn_and_hqq_codes_hooks_give_one_entry_per_layer_with_its_bias(tmp_path, tiny_tokenizer):
    """The contract hook directly, on a model whose projections have biases (Qwen2-style q/k/v):
    the bias travels with the codes, in the layer's dtype."""
    build_tiny_llama(vocab_size=len(tiny_tokenizer), attention_bias=True).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    resolved = models.resolve(ModelRef(str(tmp_path)))
    linears = float_linears(resolved)
    for name in ("rtn", "hqq"):
        codes = get_backend(name).codes(resolved, linears, bits=4, group_size=32, symmetric=False, device="cpu")
        assert codes.keys() == linears.keys()
        for layer_name, layer in codes.items():
            bias = linears[layer_name].bias
            assert (layer.bias is None) == (bias is None) and layer.in_perm is None
            if bias is not None:
                assert torch.equal(layer.bias, bias)
            assert layer.weight.bits == 4 and layer.weight.group_size == 32
        assert sum(layer.bias is not None for layer in codes.values()) == 2 * 4  # q, k, v, o per layer


def test_check_on_cpu_says_reference_path_runs():
    availability = TritonBackend().check("cpu")
    assert availability.ok
    assert "pure-torch reference path runs" in availability.reason


def test_check_reports_missing_triton(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert "triton is not installed" in TritonBackend().check("cpu").reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_check_cuda_without_device():
    assert TritonBackend().check("cuda") == type(TritonBackend().check("cuda"))(
        False, "no CUDA device visible to torch"
    )


def test_hqq_source_is_hqqs_model_through_our_format(resolved):
    """triton:source=hqq quantizes each layer with hqq as the hqq adapter does (same defaults, fp32
    compute on CPU here) and converts it: the logits are hqq's own (measured max |Δ| 0; bound 1e-6)."""
    pytest.importorskip("hqq")
    ours = quantize(TritonBackend(), resolved, source="hqq", bits=4, group_size=32)
    assert ours.kernel == f"{REFERENCE_KERNEL} on hqq codes"
    theirs = quantize(HqqBackend(), resolved, nbits=4, group_size=32, compute_dtype="float32")
    torch.testing.assert_close(ours.logits(INPUT_IDS), theirs.logits(INPUT_IDS), rtol=0, atol=1e-6)
    layers = [m for m in ours.module.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14 and {m.scales.dtype for m in layers} == {torch.float32}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"bits": 5}, "bits: Value error, the packed format holds 2, 3, 4, 8 bits, got 5"),
        ({"group_size": 100}, "group_size: Value error, must be -1 (per channel) or a power of two ≥ 16"),
        ({"source": "gguf"}, "source: Input should be 'rtn', 'gptq', 'awq' or 'hqq'"),
        ({"kernel": "gemv"}, "kernel: unknown parameter"),
        ({"source": "awq", "bits": 8}, "params: Value error, source=awq is 4-bit only (GPTQModel's AWQ GEMM format)"),
        ({"source": "hqq", "symmetric": True}, "params: Value error, source=hqq is always asymmetric"),
    ],
)
def test_invalid_params_fail_with_one_line(raw, message):
    with pytest.raises(QuantbenchError) as err:
        validate_params(TritonBackend.Params, raw, "method triton")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_group_size_not_dividing_in_features_is_rejected(resolved):
    with pytest.raises(QuantbenchError, match=r"^group_size 128 does not divide in_features 64 of layer model"):
        quantize(TritonBackend(), resolved, group_size=128)


def test_3bit_needs_in_features_divisible_by_32(tmp_path, tiny_tokenizer):
    """32 three-bit codes fill 3 words; a 48-wide layer would leave a word half full."""
    build_tiny_llama(vocab_size=len(tiny_tokenizer), hidden_size=48, intermediate_size=96).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    narrow = models.resolve(ModelRef(str(tmp_path)))
    message = r"^layer model\.layers\.0\.self_attn\.q_proj: 3-bit packing needs in_features divisible by 32, got 48$"
    with pytest.raises(QuantbenchError, match=message):
        quantize(TritonBackend(), narrow, bits=3, group_size=16)


@pytest.mark.parametrize("layout", ["gptq", "gptq_v2"])
def test_gptq_layer_codes_read_either_checkpoint_layout(layout):
    """What gptq's codes() does with each layer of the checkpoint GPTQModel saved, on tensors packed
    here (act-order rows, a bias): "gptq" (v1) stores zero - 1, "gptq_v2" the zero; both give back
    the weights they stand for, exactly, with the bias and the input permutation."""
    k_in, n_out, group = 128, 64, 32
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (k_in, n_out), generator=gen, dtype=torch.uint8)
    zeros = torch.randint(1, 16, (k_in // group, n_out), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(k_in // group, n_out, generator=gen) * 0.01 + 1e-3).half()
    g_idx = (torch.arange(k_in) // group)[torch.randperm(k_in, generator=gen)]
    stored = zeros - 1 if layout == "gptq" else zeros
    tensors = {
        "qweight": pack_codes(codes, 4),
        "qzeros": pack_codes(stored.T.contiguous(), 4).T.contiguous(),  # packed along N, same bit stream
        "scales": scales,
        "g_idx": g_idx.to(torch.int32),
        "bias": torch.randn(n_out, generator=gen).half(),
    }
    layer = GptqBackend().layer_codes(tensors, GptqParams(bits=4, group_size=group), layout)
    dense = (codes.float() - zeros[g_idx].float()) * scales[g_idx].float()
    assert torch.equal(weights_of(QuantLinear(layer.weight, layer.bias, layer.in_perm)), dense)
    assert layer.bias is tensors["bias"]


# --- GPTQ and AWQ sources: GPTQModel quantizes, the project's format runs ------------------------

SMALL_CALIBRATION = {"group_size": 32, "n_samples": 8, "seq_len": 64}


def checkpoint_tensors(directory) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    config = json.loads((directory / "quantize_config.json").read_text())
    return config, {k: v for shard in sorted(directory.glob("*.safetensors")) for k, v in load_file(shard).items()}


def weights_of(layer: QuantLinear) -> torch.Tensor:
    """The dense (K, N) weight in the layer's input order (undoing an act-order permutation)."""
    sorted_rows = reference.dequantize(layer.packed)
    if layer.in_perm is None:
        return sorted_rows
    weight = torch.empty_like(sorted_rows)
    weight[layer.in_perm] = sorted_rows
    return weight


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_checkpoint_converts_to_gptqmodels_own_weights(resolved, tmp_path, bits):
    """Each layer of a real GPTQModel checkpoint (act-order, asymmetric) converted by us dequantizes
    to what GPTQModel's own TorchLinear.dequantize_weight gives, up to its bf16 arithmetic (measured
    ≤ 5.1e-3 relative at 3 bits: two roundings; rtol 2**-7). A layout error would be off by whole codes."""
    pytest.importorskip("gptqmodel")
    from gptqmodel import BACKEND, GPTQModel

    params = GptqParams(bits=bits, desc_act=True, sym=False, **SMALL_CALIBRATION)
    GptqBackend()._save_checkpoint(resolved, params, "cpu", str(tmp_path))
    config, tensors = checkpoint_tensors(tmp_path)
    assert config["checkpoint_format"] == "gptq"
    theirs = GPTQModel.load(str(tmp_path), backend=BACKEND.TORCH, device="cpu").model
    checked = 0
    for name, module in theirs.named_modules():
        if type(module).__name__ != "TorchLinear":
            continue
        get = tensors.get
        ours = QuantLinear.from_gptq(
            get(f"{name}.qweight"), get(f"{name}.qzeros"), get(f"{name}.scales"), bits, get(f"{name}.g_idx")
        )
        assert ours.in_perm is not None  # act-order scattered the groups
        torch.testing.assert_close(weights_of(ours), module.dequantize_weight().float(), rtol=2**-7, atol=1e-7)
        checked += 1
    assert checked == 14


@pytest.fixture(scope="module")
def wide_resolved(tmp_path_factory, tiny_tokenizer):
    """AWQ's clip search needs out_features divisible by 64: the tiny model's k/v projections (32) are
    too narrow, so AWQ runs on a wider one (as in test_gptq.py)."""
    pytest.importorskip("gptqmodel")
    path = tmp_path_factory.mktemp("tiny-llama-wide")
    build_tiny_llama(vocab_size=len(tiny_tokenizer), hidden_size=128, intermediate_size=256).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return models.resolve(ModelRef(str(path)))


def test_awq_checkpoint_converts_to_gptqmodels_own_weights(wide_resolved, tmp_path):
    """Each layer of a real GPTQModel AWQ (GEMM) checkpoint converted by us dequantizes to what
    GPTQModel's dequantize_gemm gives, up to its bf16 rounding of the product."""
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

    AwqBackend()._save_checkpoint(wide_resolved, AwqParams(**SMALL_CALIBRATION), "cpu", str(tmp_path))
    config, tensors = checkpoint_tensors(tmp_path)
    assert config["checkpoint_format"] == "gemm"
    names = sorted(key.removesuffix(".qweight") for key in tensors if key.endswith(".qweight"))
    assert len(names) == 14
    for name in names:
        qweight, qzeros, scales = (tensors[f"{name}.{key}"] for key in ("qweight", "qzeros", "scales"))
        ours = QuantLinear.from_awq(qweight, qzeros, scales, 32)
        theirs = dequantize_gemm(qweight, qzeros, scales, 4, 32).float()
        torch.testing.assert_close(weights_of(ours), theirs, rtol=2**-8, atol=1e-7)


@pytest.mark.parametrize("source", ["gptq", "awq"])
def test_gptq_and_awq_sources_through_the_adapter(resolved, wide_resolved, source):
    """The whole adapter: GPTQModel quantizes (through the gptq/awq adapters' codes(), default
    calibration), every layer is converted, the kernel field names the source, and the model stays
    close to the unquantized one (4-bit, groups of 32)."""
    model = resolved if source == "gptq" else wide_resolved
    quantized = quantize(TritonBackend(), model, source=source, group_size=32)
    assert quantized.kernel == f"{REFERENCE_KERNEL} on {source} codes"
    assert sum(isinstance(m, QuantLinear) for m in quantized.module.modules()) == 14
    logits = quantized.logits(INPUT_IDS)
    base = models.load(model)
    with torch.inference_mode():
        expected = base(input_ids=INPUT_IDS).logits
    assert torch.isfinite(logits).all()
    assert (logits - expected).pow(2).mean() < expected.pow(2).mean() / 10


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is not None, reason="checks the message without GPTQModel")
def test_gptq_source_without_gptqmodel_says_why(resolved):
    with pytest.raises(QuantbenchError, match=r"^triton: source=gptq needs gptq: gptqmodel is not installed"):
        quantize(TritonBackend(), resolved, source="gptq")
