import math

import pytest
import torch
from support import INPUT_IDS

from quantbench.backends.hqq import HqqBackend
from quantbench.errors import QuantbenchError
from quantbench.spec import validate_params

pytest.importorskip("hqq")

STORED = ("W_q", "scale", "zero")


@pytest.fixture(scope="module")
def quantized(resolved):
    """One quantization per bit width (hqq's optimizer takes seconds per model even this small)."""
    backend = HqqBackend()
    cache = {}

    def get(**raw):
        key = tuple(sorted(raw.items()))
        if key not in cache:
            cache[key] = backend.quantize(resolved, validate_params(backend.Params, raw, "method hqq"), "cpu")
        return cache[key]

    return get


def packed_bytes(numel: int, group_size: int, nbits: int, axis: int) -> int:
    """hqq 0.2 packing: 8/4/2/1-bit codes fill whole bytes; 3-bit packs 10 codes per int32 along
    the grouped matrix's first dimension (numel/group_size rows for axis 1, group_size for axis 0)."""
    if nbits == 3:
        rows, cols = (numel // group_size, group_size) if axis == 1 else (group_size, numel // group_size)
        return 4 * math.ceil(rows / 10) * cols
    return numel * (8 if nbits in (5, 6) else nbits) // 8


@pytest.mark.parametrize(("nbits", "axis"), [(8, 1), (4, 1), (3, 1), (2, 0)])
def test_weight_bytes_match_format(baseline, quantized, nbits, axis):
    """The format: packed codes + a bf16 scale and a bf16 zero per group of 64 + hqq's small
    encoded metadata tensors (shape, nbits, packing name...). Unquantized layers stay bf16."""
    q = quantized(nbits=nbits, axis=axis)
    state = q.module.state_dict()
    linears = {n: m for n, m in baseline[0].named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    total = 0
    for name, layer in linears.items():
        n = layer.weight.numel()
        total += packed_bytes(n, 64, nbits, axis) + 2 * 2 * (n // 64)
        meta = [v for k, v in state.items() if k.startswith(name + ".") and k.removeprefix(name + ".") not in STORED]
        total += sum(v.numel() * v.element_size() for v in meta)
    quantized_ids = {id(m.weight) for m in linears.values()}
    total += sum(2 * p.numel() for p in baseline[0].parameters() if id(p) not in quantized_ids)
    assert q.weight_bytes == total
    assert q.bits_per_weight == pytest.approx(8 * total / sum(p.numel() for p in baseline[0].parameters()))
    assert q.kernel.startswith("hqq PYTORCH backend")
    assert torch.isfinite(q.logits(INPUT_IDS)).all()


def test_8bit_closer_to_baseline_than_4bit(baseline, quantized):
    errors = {b: (quantized(nbits=b, axis=1).logits(INPUT_IDS) - baseline[1]).pow(2).mean().item() for b in (8, 4)}
    assert 0 < errors[8] < errors[4]


def test_group_size_must_divide_in_features(resolved):
    backend = HqqBackend()
    with pytest.raises(QuantbenchError, match=r"group_size 48 does not divide in_features 64 of layer model\.layers"):
        backend.quantize(resolved, validate_params(backend.Params, {"group_size": "48"}, "method hqq"), "cpu")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"nbits": 7}, "nbits: Input should be 1, 2, 3, 4, 5, 6 or 8"),
        ({"group_size": 60}, "group_size: Value error, hqq needs a multiple of 8"),
        ({"axis": 2}, "axis: Input should be 0 or 1"),
        ({"bits": 7}, "bits: Input should be 1, 2, 3, 4, 5, 6 or 8"),  # the shared name of nbits
        ({"nbit": 4}, "unknown parameter"),
    ],
)
def test_invalid_params_fail_in_one_line(raw, needle):
    with pytest.raises(QuantbenchError, match=needle) as err:
        validate_params(HqqBackend.Params, raw, "method hqq")
    assert "\n" not in str(err.value)


def test_check_says_why(monkeypatch):
    backend = HqqBackend()
    assert backend.check("cpu").ok
    monkeypatch.setattr(HqqBackend, "library_version", lambda self: None)
    assert backend.check("cpu").reason == "hqq is not installed (pip install hqq)"
