import pytest
import torch
from support import INPUT_IDS, WIKITEXT_TEST

from quantbench import models
from quantbench.app.cli import main
from quantbench.backends.qat import QatBackend, train_quantized
from quantbench.backends.registry import get_backend, method_facts, method_label
from quantbench.backends.torchao import TorchaoBackend
from quantbench.errors import QuantbenchError
from quantbench.results.store import read_results
from quantbench.spec import MethodSpec, validate_params

pytest.importorskip("torchao")


def params(**raw):
    return validate_params(QatBackend.Params, raw, "method qat")


def nll(module: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        return module(input_ids=ids, labels=ids).loss.item()


def test_registry_finds_it_by_file_name():
    assert isinstance(get_backend("qat"), QatBackend)
    assert method_label(MethodSpec("qat", {})) == "qat:group_size=64,steps=4"


def test_quantized_layers_and_bytes_match_the_twin(resolved):
    backend = QatBackend()
    q = backend.quantize(resolved, params(steps=2, seq_len=32), "cpu")
    blocks = {n: m for n, m in q.module.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert {type(m.weight).__name__ for m in blocks.values()} == {"IntxUnpackedToInt8Tensor"}
    assert {str(m.weight.activation_quantization) for m in blocks.values()} == {"int8_asym_per_token"}
    assert type(q.module.lm_head.weight) is torch.nn.Parameter
    twin = TorchaoBackend().quantize(resolved, params().twin(), "cpu")
    assert q.weight_bytes == twin.weight_bytes
    layout = backend.layout(params(), "cpu")
    down = q.module.model.layers[0].mlp.down_proj.weight
    inner = sum(getattr(down, n).numel() * getattr(down, n).element_size() for n in down.__tensor_flatten__()[0])
    assert layout.linear_bytes(*down.shape) == inner == 64 * 128 + 64 * 2 * (2 + 1)
    assert q.kernel.startswith("torchao IntxUnpackedToInt8Tensor after 2 QAT steps")
    assert torch.isfinite(q.logits(INPUT_IDS)).all()


def test_without_windows_it_is_the_post_training_twin(resolved):
    module = models.load(resolved, dtype="float32")
    train_quantized(module, torch.empty(0, 16, dtype=torch.long), 1e-5, 64, "bfloat16", "cpu")
    twin = TorchaoBackend().quantize(resolved, params().twin(), "cpu")
    with torch.inference_mode():
        assert torch.equal(module(input_ids=INPUT_IDS).logits, twin.module(input_ids=INPUT_IDS).logits)


def test_training_lowers_the_quantized_loss_on_its_text(resolved):
    """Four steps on one window at a high learning rate: the converted model predicts that window
    better than the untrained twin (the tiny model is random, so any learning shows)."""
    window = torch.arange(2, 66).reshape(1, 64) % 500
    twin = models.load(resolved, dtype="float32")
    train_quantized(twin, window[:0], 1e-3, 64, "float32", "cpu")
    trained = models.load(resolved, dtype="float32")
    train_quantized(trained, window.repeat(4, 1), 1e-3, 64, "float32", "cpu")
    assert nll(trained, window) < nll(twin, window) - 0.1
    assert not any(p.requires_grad for p in trained.parameters())


def test_group_size_must_divide_in_features(resolved):
    with pytest.raises(QuantbenchError, match=r"group_size 256 does not divide in_features 64"):
        QatBackend().quantize(resolved, params(group_size="256"), "cpu")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"steps": 0}, r"steps: Value error, must be at least 1, got 0 \(without training the scheme is torchao"),
        ({"steps": -3}, "steps: Value error, must be at least 1, got -3"),
        ({"learning_rate": 0}, "learning_rate: Input should be greater than 0"),
        ({"group_size": 48}, "group_size: Input should be 32, 64, 128 or 256"),
        ({"bits": 4}, "bits: unknown parameter"),
    ],
)
def test_invalid_params_fail_in_one_line(raw, needle):
    with pytest.raises(QuantbenchError, match=needle) as err:
        params(**raw)
    assert "\n" not in str(err.value)


def test_facts():
    backend = QatBackend()
    assert backend.check("cpu").ok
    assert backend.calibration_corpus(params(calibration="x.txt")) == "x.txt"
    assert params().bits == 4 and params(group_size=32).twin().group_size == 32
    assert "cannot save" in method_facts(backend) and "fine-tunes the model" in method_facts(backend)


@pytest.mark.slow
def test_a_real_trial_of_the_embedded_model(tmp_path):
    args = ["run", "--model", "embedded:smollm2-135m", "--method", "qat:steps=1,seq_len=128", "--eval", "perplexity"]
    args += ["--corpus", str(WIKITEXT_TEST), "--seq-len", "128", "--max-tokens", "128", "--store", str(tmp_path)]
    assert main(args) == 0
    frame = read_results(tmp_path).frame
    assert set(frame["status"]) == {"ok"}
    assert frame["method_label"].iloc[0] == "qat:group_size=64,seq_len=128,steps=1"
    values = dict(zip(frame["metric"], frame["value"], strict=True))
    # Measured on this 2-core CPU, torch 2.13, torchao 0.18: 38.18 on these 127 tokens (SmoothQuant's int8
    # scores 28.49 on them); a broken conversion scores thousands.
    assert values["perplexity"] == pytest.approx(38.18, rel=0.02)
    # Exactly what `quantbench plan --model smollm2-135m --method qat --device cpu` prices.
    assert values["weight_bytes"] == 111_144_960 + 56_693_376
