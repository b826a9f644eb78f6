import math

import pytest
import torch
from support import INPUT_IDS

from quantbench.backends.bnb import BnbBackend
from quantbench.errors import QuantbenchError
from quantbench.spec import validate_params

pytest.importorskip("bitsandbytes")

BLOCK = 64  # bitsandbytes' 4-bit block size in transformers
JSON_DIGITS_SLACK = 8  # bytes per quant-state JSON, see test_weight_bytes_match_format


def quantize(resolved, **raw):
    backend = BnbBackend()
    params = validate_params(backend.Params, raw, "method bnb")
    return backend.quantize(resolved, params, "cpu")


def expected_bytes(base: torch.nn.Module, bits: int, double_quant: bool, state: dict) -> int:
    """The format: int8 = int8 codes + one fp32 scale (SCB) per output row + a 1-byte format tag;
    4-bit = two codes per byte + one absmax per 64-weight block (fp32, or uint8 with double quant
    plus one fp32 per 256 blocks and a 256-entry fp32 code book) + a 16-entry fp32 code book and
    the quant-state JSON. Layers left unquantized stay in bf16."""
    total = 0
    for name, mod in base.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            out, n = mod.weight.shape[0], mod.weight.numel()
            state_json = sum(v.numel() for k, v in state.items() if k.startswith(f"{name}.weight.quant_state."))
            if bits == 8:
                total += n + 4 * out + 1
            elif double_quant:
                blocks = n // BLOCK
                total += n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4 * 256 + 4 * 16 + state_json
            else:
                total += n // 2 + 4 * (n // BLOCK) + 4 * 16 + state_json
    quantized = {id(m.weight) for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    return total + sum(2 * p.numel() for p in base.parameters() if id(p) not in quantized)


@pytest.mark.parametrize(
    ("raw", "bits", "double_quant"),
    [
        ({"bits": 8}, 8, False),
        ({"bits": 4}, 4, False),
        ({"bits": 4, "quant_type": "fp4", "double_quant": True}, 4, True),
    ],
)
def test_weight_bytes_match_format(resolved, baseline, raw, bits, double_quant):
    q = quantize(resolved, **raw)
    state = q.module.state_dict()
    expected = expected_bytes(baseline[0], bits, double_quant, state)
    # weight_bytes is counted before bnb's first CPU forward; on AVX512-BF16 CPUs that forward
    # (run while quantizing) repacks 4-bit layers, and state_dict() unpacks them again with their
    # quant-state JSON's float fields (nested_offset) rounded to other digits.
    json_slack = JSON_DIGITS_SLACK * sum(1 for key in state if ".quant_state." in key)
    assert abs(q.weight_bytes - expected) <= json_slack
    assert q.bits_per_weight == pytest.approx(8 * q.weight_bytes / sum(p.numel() for p in baseline[0].parameters()))
    assert q.kernel.startswith("bnb cpu")


def test_int8_closer_to_baseline_than_nf4(resolved, baseline):
    errors = {}
    for bits in (8, 4):
        q = quantize(resolved, bits=bits)
        logits = q.logits(INPUT_IDS)
        assert torch.isfinite(logits).all()
        errors[bits] = (logits - baseline[1]).pow(2).mean().item()
    assert 0 < errors[8] < errors[4]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"bits": 5}, "bits"),
        ({"quant_type": "int3"}, "quant_type"),
        ({"bits": 8, "quant_type": "nf4"}, "quant_type applies to bits=4 only"),
        ({"bits": 4, "threshold": 4.0}, "threshold applies to bits=8 only"),
        ({"blocksize": 32}, "unknown parameter"),
    ],
)
def test_invalid_params_fail_in_one_line(raw, needle):
    with pytest.raises(QuantbenchError, match=needle) as err:
        validate_params(BnbBackend.Params, raw, "method bnb")
    assert "\n" not in str(err.value)


def test_check_says_why(monkeypatch):
    backend = BnbBackend()
    cpu = backend.check("cpu")
    assert cpu.ok
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        assert "AVX512" in cpu.reason
    if not torch.cuda.is_available():
        assert backend.check("cuda").reason == "no CUDA device visible to torch"
    monkeypatch.setattr(BnbBackend, "library_version", lambda self: "0.45.0")
    assert not backend.check("cpu").ok and "0.45.0 is older than the 0.46.1" in backend.check("cpu").reason
    monkeypatch.setattr(BnbBackend, "library_version", lambda self: None)
    assert backend.check("cpu").reason == "bitsandbytes is not installed (pip install bitsandbytes)"
