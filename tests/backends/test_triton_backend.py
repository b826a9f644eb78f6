import importlib.util

import pytest
import torch
from support import INPUT_IDS

from quantbench.backends.registry import get_backend
from quantbench.backends.rtn import RtnBackend
from quantbench.backends.triton import TritonBackend
from quantbench.errors import QuantbenchError
from quantbench.kernels.quant_linear import REFERENCE_KERNEL, QuantLinear
from quantbench.spec import validate_params


def quantize(backend, resolved, **raw):
    params = validate_params(backend.Params, raw, f"method {backend.name}")
    return backend.quantize(resolved, params, "cpu")


@pytest.mark.parametrize(("bits", "group_size", "symmetric"), [(4, 32, False), (8, 64, True), (2, -1, False)])
def test_packed_model_matches_rtn_fake_quant(resolved, bits, group_size, symmetric):
    """The reference path of the packed model and RTN's fake-quant weights are the same format:
    same bytes (one counted from real buffers, one from the formula), same logits."""
    raw = dict(bits=bits, group_size=group_size, symmetric=symmetric)
    packed = quantize(TritonBackend(), resolved, **raw)
    fake = quantize(RtnBackend(), resolved, **raw)
    linears = [n for n, m in packed.module.named_modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 14  # 2 layers × (q, k, v, o, gate, up, down); lm_head kept
    assert packed.kernel == REFERENCE_KERNEL
    assert packed.weight_bytes == fake.weight_bytes
    assert packed.bits_per_weight == pytest.approx(fake.bits_per_weight)
    torch.testing.assert_close(packed.logits(INPUT_IDS), fake.logits(INPUT_IDS), rtol=1e-5, atol=1e-5)


def test_registered():
    assert isinstance(get_backend("triton"), TritonBackend)
    assert isinstance(get_backend("rtn"), RtnBackend)


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


def test_other_sources_not_yet_supported(resolved):
    with pytest.raises(QuantbenchError, match=r"^triton: source=gptq is not yet supported; use source=rtn"):
        quantize(TritonBackend(), resolved, source="gptq")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"bits": 3}, "bits: Value error, the packed format holds 2, 4, 8 bits, got 3"),
        ({"group_size": 100}, "group_size: Value error, must be -1 (per channel) or a power of two ≥ 16"),
        ({"source": "gguf"}, "source: Input should be 'rtn', 'gptq', 'awq' or 'hqq'"),
        ({"kernel": "gemv"}, "kernel: unknown parameter"),
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
