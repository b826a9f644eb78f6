import pytest
import torch
from support import INPUT_IDS, WIKITEXT_TEST
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from quantbench.app.cli import main
from quantbench.backends.dynamic import DynamicBackend, packed_bytes
from quantbench.backends.registry import get_backend, method_facts
from quantbench.errors import QuantbenchError
from quantbench.results.store import read_results
from quantbench.spec import validate_params

BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize(resolved, **raw):
    backend = DynamicBackend()
    params = validate_params(backend.Params, raw, "method dynamic")
    return backend.quantize(resolved, params, "cpu"), backend.layout(params, "cpu")


def stored_bytes(layer: nn.Module) -> int:
    """What a dynamic Linear's state_dict holds: the packed weight and bias plus its own buffers."""
    buffers = [t for t in layer.state_dict().values() if isinstance(t, torch.Tensor)]
    return packed_bytes(layer) + sum(t.numel() * t.element_size() for t in buffers)


def test_every_block_linear_becomes_an_int8_dynamic_linear_and_lm_head_stays_float(resolved, baseline):
    q, _ = quantize(resolved)
    layers = dict(q.module.named_modules())
    quantized = {name for name, m in layers.items() if isinstance(m, DynamicLinear)}
    assert quantized == {
        f"model.layers.{i}.{block}.{proj}"
        for i in range(2)
        for block, projs in (("self_attn", BLOCK_LINEARS[:4]), ("mlp", BLOCK_LINEARS[4:]))
        for proj in projs
    }
    assert all(layers[name].weight().dtype == torch.qint8 for name in quantized)
    assert torch.equal(q.module.lm_head.weight, baseline[0].lm_head.weight)
    assert q.kernel.startswith("torch quantized::linear_dynamic, x86 engine (fbgemm)")


def test_logits_are_close_to_the_float_model_but_not_equal(resolved, baseline):
    q, _ = quantize(resolved)
    error = (q.logits(INPUT_IDS) - baseline[1]).abs().max().item()
    assert 0 < error < 0.05 * baseline[1].abs().max().item()


# One 64 x 64 projection, as its state_dict holds it: 4096 int8 codes; a float64 scale and an int64
# zero point per tensor or per row; the module's float32 output scale and int64 zero point; for
# qnnpack a float32 bias of zeros per row (the layer has no bias).
@pytest.mark.parametrize(
    ("engine", "per_channel", "q_proj_bytes"),
    [("x86", False, 4096 + 16 + 12), ("x86", True, 4096 + 64 * 16 + 12),
     ("qnnpack", False, 4096 + 16 + 12 + 64 * 4), ("qnnpack", True, 4096 + 64 * 16 + 12 + 64 * 4)],
)  # fmt: skip
def test_weight_bytes_are_what_the_layout_predicts(resolved, baseline, engine, per_channel, q_proj_bytes):
    q, layout = quantize(resolved, engine=engine, per_channel=per_channel)
    assert stored_bytes(q.module.model.layers[0].self_attn.q_proj) == layout.linear_bytes(64, 64) == q_proj_bytes
    base = baseline[0]
    linears = [m for name, m in base.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"]
    floats = sum(4 * p.numel() for p in base.parameters()) - sum(4 * m.weight.numel() for m in linears)
    assert q.weight_bytes == floats + sum(layout.linear_bytes(*m.weight.shape) for m in linears)
    assert q.bits_per_weight == pytest.approx(8 * q.weight_bytes / sum(p.numel() for p in base.parameters()))


def test_per_channel_gives_each_output_row_its_scale(resolved):
    per_tensor, _ = quantize(resolved)
    per_row, _ = quantize(resolved, per_channel=True)
    assert per_tensor.module.model.layers[0].mlp.up_proj.weight().qscheme() == torch.per_tensor_affine
    weight = per_row.module.model.layers[0].mlp.up_proj.weight()
    assert weight.qscheme() == torch.per_channel_affine and weight.q_per_channel_scales().shape == (128,)
    assert "weight scales per row" in per_row.kernel


def test_qnnpack_quantizes_activations_in_8_bits_and_the_engine_is_restored(resolved, baseline):
    """The module asks for 7-bit activations (reduce_range); fbgemm gives them, qnnpack ignores it,
    so its logits are nearer the float model's."""
    engine = torch.backends.quantized.engine
    x86, _ = quantize(resolved)
    qnnpack, _ = quantize(resolved, engine="qnnpack")
    assert torch.backends.quantized.engine == engine
    errors = {q.kernel.split(",")[1]: (q.logits(INPUT_IDS) - baseline[1]).pow(2).mean().item() for q in (x86, qnnpack)}
    assert errors[" qnnpack engine: int8 weights"] < errors[" x86 engine (fbgemm): int8 weights"]


def test_empty_skip_quantizes_the_output_head_too(resolved, baseline):
    kept, _ = quantize(resolved)
    q, layout = quantize(resolved, skip="")
    assert isinstance(q.module.lm_head, DynamicLinear)
    head = baseline[0].lm_head.weight
    assert kept.weight_bytes - q.weight_bytes == 4 * head.numel() - layout.linear_bytes(*head.shape)
    # A decode step reads every weight but the input embedding (a lookup); the packed head is not tied to it.
    embedding = baseline[0].get_input_embeddings().weight
    assert q.decode_weight_bytes == q.weight_bytes - 4 * embedding.numel()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"engine": "fbgemm"}, "engine: Input should be 'x86' or 'qnnpack'"),
        ({"per_channel": "maybe"}, "per_channel: Input should be a valid boolean"),
        ({"bits": 4}, "bits: unknown parameter"),
    ],
)
def test_invalid_params_fail_with_one_line(raw, message):
    with pytest.raises(QuantbenchError) as err:
        validate_params(DynamicBackend.Params, raw, "method dynamic")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_skip_name_is_rejected(resolved):
    with pytest.raises(QuantbenchError, match=r"^skip names no weight matrix in this model: model\.lm_head$"):
        quantize(resolved, skip="model.lm_head")


def test_facts_as_the_interfaces_show_them():
    backend = get_backend("dynamic")
    assert backend.check("cuda").reason == "dynamic does not run on cuda (supports cpu)"
    assert backend.check("cpu").ok
    assert method_facts(backend) == (
        "no calibration text; cannot save its quantized model; "
        "torch.ao.quantization is deprecated upstream (use torchao)"
    )
    assert backend.Params().bits == 8


@pytest.mark.slow
def test_a_real_trial_of_the_embedded_model(tmp_path):
    args = ["run", "--model", "embedded:smollm2-135m", "--method", "dynamic", "--eval", "perplexity"]
    args += ["--corpus", str(WIKITEXT_TEST), "--seq-len", "128", "--max-tokens", "256", "--store", str(tmp_path)]
    assert main(args) == 0
    frame = read_results(tmp_path).frame
    assert set(frame["status"]) == {"ok"} and frame["method_label"].iloc[0] == "dynamic:engine=x86"
    values = dict(zip(frame["metric"], frame["value"], strict=True))
    # Measured on this AVX2 CPU, torch 2.13: 125.07 (fp32 scores 49.97 on these 256 tokens); fbgemm's
    # rounding may differ on other instruction sets, a broken model scores thousands.
    assert values["perplexity"] == pytest.approx(125.07, rel=0.02)
    # Exactly what `quantbench plan --model smollm2-135m --method dynamic --device cpu` prices.
    assert values["weight_bytes"] == 106_174_200 + 113_386_752
