"""Every method's `saves(params)` is true to what it does today: the checkpoint eval trusts it.

Serializable means the quantized model written by save_pretrained reloads (from_pretrained) as the
same model: the same logits, and the weight bytes of the quantized format (within 5%: the reloaded
bnb 4-bit layers share some small quant-state tensors that the quantized ones hold apiece, 1.3%
here), so the file holds the quantized weights, not dense ones (rtn: 2x its packed size here).
Observed on the tiny Llama (transformers 5.x; bitsandbytes 0.50, torchao 0.18, hqq 0.2.8,
optimum-quanto 0.2.7): baseline, bnb and torchao reload exactly; hqq and quanto save a file without
a quantization_config that reloads as a different model; rtn reloads its dense dequantized weights
(the same logits, but not its packed size); triton's packed buffers do not load into nn.Linear;
torchao with smoothquant=true fails to save (its SmoothQuantModel says why).
GPTQ/AWQ (GPTQModel writes quantize_config.json) are checked in tests/backends/test_gptq.py's env.
"""

import warnings

import pytest
import torch
from support import INPUT_IDS

from quantbench.backends.base import weight_bytes
from quantbench.backends.registry import get_backend
from quantbench.spec import MethodSpec, validate_params


def reloads_as_itself(quantized, directory) -> bool:
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing/unexpected keys are what this looks for, not noise
        try:
            quantized.module.save_pretrained(directory)  # torchao's tensors outside from_pretrained fail here
            reloaded = AutoModelForCausalLM.from_pretrained(directory, device_map={"": "cpu"}).eval()
        except (RuntimeError, ValueError, KeyError):  # state dict entries that fit no module
            return False
    size = weight_bytes(reloaded)
    with torch.inference_mode():
        logits = reloaded(input_ids=INPUT_IDS, use_cache=False).logits.float()
    same_format = abs(size - quantized.weight_bytes) <= 0.05 * quantized.weight_bytes
    return same_format and torch.equal(logits, quantized.logits(INPUT_IDS))


@pytest.mark.parametrize(
    "method",
    [
        "baseline",
        "bnb:bits=8",
        "bnb:bits=4",
        "torchao:bits=8",
        "torchao:bits=4",
        "torchao:activations=int8,smoothquant=true,n_samples=2,seq_len=16",
        "qat:steps=1,seq_len=16",
        "hqq",
        "quanto:weights=int8",
        "rtn",
        "triton",
    ],
)
def test_is_serializable_matches_a_save_and_reload(resolved, tmp_path, method):
    spec = MethodSpec.parse(method)
    backend = get_backend(spec.name)
    availability = backend.check("cpu")
    if not availability.ok:
        pytest.skip(availability.reason)
    params = validate_params(backend.Params, spec.params, method)
    quantized = backend.quantize(resolved, params, "cpu")
    assert reloads_as_itself(quantized, tmp_path) is backend.saves(params)
