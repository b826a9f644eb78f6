import pytest
import torch
from support import INPUT_IDS, build_tiny_llama

from quantbench import models
from quantbench.backends.quanto import QuantoBackend
from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
from quantbench.spec import ModelRef, validate_params

pytest.importorskip("optimum.quanto")

BITS = {"int8": 8, "float8": 8, "int4": 4, "int2": 2}


def quantize(resolved, **raw):
    backend = QuantoBackend()
    params = validate_params(backend.Params, raw, "method quanto")
    return backend.quantize(resolved, params, "cpu")


def quanto_group(in_features: int) -> int:
    """quanto's own choice (`nn/qmodule.py`): 128, lowered in steps of 32 until it divides the
    input width, and per output row for layers no wider than 128."""
    group = 128
    while in_features % group and group > 32:
        group -= 32
    return group if in_features > 128 and in_features % group == 0 else in_features


def expected_bytes(base: torch.nn.Module, weights: str) -> int:
    """The format: packed codes (bits/8 bytes per weight), a bf16 scale per output row (8-bit) or
    a bf16 scale and a bf16 shift per group (int4/int2), and two bf16 activation-scale scalars per
    layer. Layers left unquantized stay in bf16."""
    linears = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    total = 0
    for layer in linears.values():
        rows, cols = layer.weight.shape
        scales = rows * 2 if BITS[weights] == 8 else rows * cols // quanto_group(cols) * 2 * 2
        total += rows * cols * BITS[weights] // 8 + scales + 2 * 2
    quantized = {id(m.weight) for m in linears.values()}
    return total + sum(2 * p.numel() for p in base.parameters() if id(p) not in quantized)


@pytest.mark.parametrize(
    ("weights", "kernel"),
    [
        ("int8", "quanto int8 torch._weight_int8pack_mm"),
        ("float8", "quanto float8 WeightQBytesTensor dequantize"),
        ("int4", "quanto int4 unpack + dequantize"),
        ("int2", "quanto int2 unpack + dequantize"),
    ],
)
def test_weight_bytes_match_format(resolved, baseline, weights, kernel):
    q = quantize(resolved, weights=weights)
    assert q.weight_bytes == expected_bytes(baseline[0], weights)
    assert q.bits_per_weight == pytest.approx(8 * q.weight_bytes / sum(p.numel() for p in baseline[0].parameters()))
    assert q.kernel.startswith(kernel)
    assert torch.isfinite(q.logits(INPUT_IDS)).all()  # logits() runs in inference mode


def test_int4_uses_tinygemm_when_groups_are_128(tmp_path, tiny_tokenizer):
    build_tiny_llama(vocab_size=len(tiny_tokenizer), hidden_size=256, intermediate_size=512).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    resolved = models.resolve(ModelRef(str(tmp_path)))
    q = quantize(resolved, weights="int4")
    assert q.kernel == "quanto int4 TinyGemm _weight_int4pack_mm_for_cpu"
    assert q.weight_bytes == expected_bytes(models.load(resolved), "int4")
    assert torch.isfinite(q.logits(INPUT_IDS)).all()


def test_int8_activations_calibrate_and_stay_close(resolved, baseline):
    q = quantize(resolved, activations="int8", calibration_samples=2, seq_len=32)
    assert q.kernel == "quanto int8 weights × int8 activations torch._int_mm"
    scales = [m.input_scale.item() for n, m in q.module.named_modules() if n.endswith("q_proj")]
    assert all(s != 1.0 for s in scales)  # calibrated, not the default
    error = (q.logits(INPUT_IDS) - baseline[1]).pow(2).mean().item()
    assert error < (baseline[1].pow(2).mean().item()) / 10


def test_too_short_calibration_corpus_fails_in_one_line(resolved):
    backend = QuantoBackend()
    params = validate_params(backend.Params, {"activations": "int8", "seq_len": 64}, "method quanto")
    with pytest.raises(QuantbenchError, match=r"calibration corpus 'tiny' has \d+ tokens, fewer than n_samples"):
        backend.quantize(resolved, params, "cpu", Corpus("tiny", ("only a few words",)))


def test_int8_closer_to_baseline_than_int4(resolved, baseline):
    errors = {w: (quantize(resolved, weights=w).logits(INPUT_IDS) - baseline[1]).pow(2).mean().item() for w in BITS}
    assert 0 < errors["int8"] < errors["int4"] < errors["int2"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"weights": "int3"}, "weights: Input should be"),
        ({"activations": "float8"}, "activations: Input should be 'none' or 'int8'"),
        ({"seq_len": 128}, "seq_len applies to activations=int8 only"),
        ({"weights": "int4", "activations": "int8"}, "activations=int8 needs weights=int8"),
        ({"activations": "int8", "calibration_samples": 0}, "calibration_samples: Input should be greater than 0"),
    ],
)
def test_invalid_params_fail_in_one_line(raw, needle):
    with pytest.raises(QuantbenchError, match=needle) as err:
        validate_params(QuantoBackend.Params, raw, "method quanto")
    assert "\n" not in str(err.value)


def test_check_says_why(monkeypatch):
    backend = QuantoBackend()
    assert backend.check("cpu").ok
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "need g++ and ninja" in backend.check("cpu").reason
    monkeypatch.setattr(QuantoBackend, "library_version", lambda self: None)
    assert backend.check("cpu").reason == "optimum-quanto is not installed (pip install optimum-quanto)"
