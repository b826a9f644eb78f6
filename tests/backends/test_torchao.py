import pytest
import torch
from support import INPUT_IDS, WIKITEXT_TEST

from quantbench.app.cli import main
from quantbench.backends.torchao import TorchaoBackend
from quantbench.errors import QuantbenchError
from quantbench.results.store import read_results
from quantbench.spec import validate_params

pytest.importorskip("torchao")


def quantize(resolved, **raw):
    backend = TorchaoBackend()
    params = validate_params(backend.Params, raw, "method torchao")
    return backend.quantize(resolved, params, "cpu")


def expected_bytes(base: torch.nn.Module, group_size: int | None) -> int:
    """The format: one int8 byte per weight (int4 codes too: IntxUnpackedToInt8Tensor keeps them
    unpacked) + per output row (int8) or per group (int4) a scale (fp32 / bf16) and an int8 zero
    point. Layers left unquantized (embeddings, norms, lm_head) stay in bf16."""
    linears = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    total = 0
    for layer in linears.values():
        rows, cols = layer.weight.shape
        total += rows * cols + (rows * (4 + 1) if group_size is None else rows * cols // group_size * (2 + 1))
    quantized = {id(m.weight) for m in linears.values()}
    return total + sum(2 * p.numel() for p in base.parameters() if id(p) not in quantized)


@pytest.mark.parametrize(
    ("raw", "group_size", "kernel"),
    [
        ({"bits": 8}, None, "torchao Int8Tensor weight-only"),
        ({"bits": 8, "activations": "int8"}, None, "torchao Int8Tensor dynamic int8 activations"),
        ({"bits": 4, "group_size": 32}, 32, "torchao IntxUnpackedToInt8Tensor"),
        ({"bits": 4, "group_size": 64, "activations": "int8"}, 64, "torchao IntxUnpackedToInt8Tensor dynamic int8"),
    ],
)
def test_weight_bytes_match_format(resolved, baseline, raw, group_size, kernel):
    q = quantize(resolved, **raw)
    assert q.weight_bytes == expected_bytes(baseline[0], group_size)
    assert q.bits_per_weight == pytest.approx(8 * q.weight_bytes / sum(p.numel() for p in baseline[0].parameters()))
    assert q.kernel.startswith(kernel)
    assert torch.isfinite(q.logits(INPUT_IDS)).all()


def test_int8_closer_to_baseline_than_int4(resolved, baseline):
    errors = {
        bits: (quantize(resolved, bits=bits).logits(INPUT_IDS) - baseline[1]).pow(2).mean().item() for bits in (8, 4)
    }
    assert 0 < errors[8] < errors[4]


def test_group_size_must_divide_in_features(resolved):
    needle = r"group_size 256 does not divide in_features 64 of layer model\.layers\.0\."
    with pytest.raises(QuantbenchError, match=needle):
        quantize(resolved, bits="4", group_size="256")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"bits": 3}, "bits: Input should be 4 or 8"),
        ({"bits": 4, "group_size": 48}, "group_size: Input should be 32, 64, 128 or 256"),
        ({"bits": 8, "group_size": 64}, "group_size applies to bits=4 only"),
        ({"activations": "fp8"}, "activations"),
    ],
)
def test_invalid_params_fail_in_one_line(raw, needle):
    with pytest.raises(QuantbenchError, match=needle) as err:
        validate_params(TorchaoBackend.Params, raw, "method torchao")
    assert "\n" not in str(err.value)


def test_check_says_why(monkeypatch):
    backend = TorchaoBackend()
    assert backend.check("cpu").ok
    monkeypatch.setattr(torch, "__version__", "2.10.0+cpu")
    assert backend.check("cpu").reason.startswith("torch 2.10.0+cpu is older than the 2.11 this adapter needs")
    monkeypatch.setattr(TorchaoBackend, "library_version", lambda self: None)
    assert backend.check("cpu").reason == "torchao is not installed (pip install torchao)"


def smoothquant_bytes(base: torch.nn.Module) -> int:
    """int8 dynamic activations' bytes plus, per quantized layer, SmoothQuant's 1 / factor per input
    channel in bf16 (the weight's `act_pre_scale`)."""
    linears = [m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    return expected_bytes(base, None) + sum(2 * layer.in_features for layer in linears)


def test_smoothquant_weight_bytes_match_layout(resolved, baseline, tmp_path):
    q = quantize(resolved, activations="int8", smoothquant=True, n_samples=2, seq_len=64)
    assert q.weight_bytes == smoothquant_bytes(baseline[0])
    backend = TorchaoBackend()
    params = validate_params(backend.Params, {"activations": "int8", "smoothquant": True}, "method torchao")
    layer = baseline[0].model.layers[0].mlp.down_proj
    rows, cols = layer.weight.shape
    assert backend.layout(params, "cpu").linear_bytes(rows, cols) == rows * cols + rows * 5 + cols * 2
    assert "SmoothQuant (alpha 0.5)" in q.kernel
    with pytest.raises(QuantbenchError, match="torchao cannot reload a SmoothQuant checkpoint"):
        q.save(tmp_path)
    assert isinstance(q.module.lm_head.weight, torch.nn.Parameter) and q.module.lm_head.weight.dtype == torch.bfloat16


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with one input channel of every projection 30× larger than the rest (through the
    norms' gains): the activation outliers SmoothQuant exists for."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbench import models
    from quantbench.spec import ModelRef

    module = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for block in module.model.layers:
            block.input_layernorm.weight[5] = 30.0
            block.post_attention_layernorm.weight[9] = 30.0
    path = tmp_path_factory.mktemp("outliers")
    module.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    resolved = models.resolve(ModelRef(str(path)))
    with torch.inference_mode():
        return resolved, models.load(resolved).forward(input_ids=INPUT_IDS).logits


def test_smoothquant_tames_activation_outliers(outlier_model):
    resolved, reference = outlier_model
    plain = quantize(resolved, activations="int8", compute_dtype="float32")
    smooth = quantize(resolved, activations="int8", compute_dtype="float32", smoothquant=True, n_samples=2, seq_len=64)

    def error(q):
        return (q.logits(INPUT_IDS) - reference).pow(2).mean().item()

    assert error(smooth) < 0.5 * error(plain)


def test_smoothquant_reads_its_calibration_corpus():
    backend = TorchaoBackend()
    assert backend.calibration_corpus(backend.Params(activations="int8")) is None
    params = validate_params(
        backend.Params, {"activations": "int8", "smoothquant": "true", "calibration": "x.txt"}, "method torchao"
    )
    assert backend.calibration_corpus(params) == "x.txt"


def test_smoothquant_defaults_leave_labels_and_keys(resolved):
    from quantbench.backends.registry import method_label, stored_params
    from quantbench.spec import MethodSpec

    assert method_label(MethodSpec("torchao", {"activations": "int8"})) == "torchao:activations=int8,bits=8"
    stored = {"bits": 8, "activations": "int8", "group_size": 32, "compute_dtype": "bfloat16"}
    assert stored_params("torchao", stored).model_dump(mode="json", exclude_defaults=True) == {"activations": "int8"}
    label = method_label(MethodSpec("torchao", {"activations": "int8", "smoothquant": True, "alpha": 0.8}))
    assert label == "torchao:activations=int8,alpha=0.8,bits=8,smoothquant=True"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"activations": "int8", "smoothquant": True, "alpha": 0}, "alpha must be between 0 and 1 .exclusive., got 0"),
        ({"activations": "int8", "smoothquant": True, "alpha": 1}, "alpha must be between 0 and 1"),
        ({"activations": "int8", "smoothquant": True, "alpha": -0.2}, "alpha must be between 0 and 1"),
        ({"smoothquant": True}, "smoothquant=true needs activations=int8"),
        ({"activations": "int8", "alpha": 0.7}, "alpha applies to smoothquant=true only"),
        ({"activations": "int8", "smoothquant": True, "n_samples": 0}, "n_samples"),
    ],
)
def test_invalid_smoothquant_params_fail_in_one_line(raw, needle):
    with pytest.raises(QuantbenchError, match=needle) as err:
        validate_params(TorchaoBackend.Params, raw, "method torchao")
    assert "\n" not in str(err.value)


def test_smoothquant_refuses_a_short_corpus(resolved, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short " * 10)
    with pytest.raises(QuantbenchError, match="fewer than n_samples × seq_len = 2048"):
        quantize(resolved, activations="int8", smoothquant=True, calibration=str(short))


@pytest.mark.slow
def test_a_real_smoothquant_trial_of_the_embedded_model(tmp_path):
    method = "torchao:activations=int8,smoothquant=true,n_samples=1,seq_len=128"
    args = ["run", "--model", "embedded:smollm2-135m", "--method", method, "--eval", "perplexity"]
    args += ["--corpus", str(WIKITEXT_TEST), "--seq-len", "128", "--max-tokens", "128", "--store", str(tmp_path)]
    assert main(args) == 0
    frame = read_results(tmp_path).frame
    assert set(frame["status"]) == {"ok"}
    assert frame["method_label"].iloc[0] == "torchao:activations=int8,bits=8,n_samples=1,seq_len=128,smoothquant=True"
    values = dict(zip(frame["metric"], frame["value"], strict=True))
    # Measured on this 2-core CPU, torch 2.13, torchao 0.18: 28.49 on these 127 tokens; a broken model
    # scores thousands.
    assert values["perplexity"] == pytest.approx(28.49, rel=0.02)
    # Exactly what `quantbench plan --model smollm2-135m --method torchao:activations=int8,smoothquant=true
    # --device cpu` prices: the int8 linears with their smoothing vectors, and the bf16 rest.
    assert values["weight_bytes"] == 107_245_440 + 56_693_376
