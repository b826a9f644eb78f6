import pytest
import torch
from support import INPUT_IDS

from quantbench.backends.torchao import TorchaoBackend
from quantbench.errors import QuantbenchError
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
        ({"bits": 4, "activations": "int8"}, "activations=int8 needs bits=8"),
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
