"""Each library adapter quantizes the real embedded model (SmolLM2-135M) and stays a language
model: one forward pass over a plain English sentence, whose mean next-token loss must stay far
below chance (ln 49152 ≈ 10.8 nats). The unquantized model scores about 3 nats on it."""

import pytest
import torch

from quantbench import models
from quantbench.backends.registry import get_backend
from quantbench.spec import ModelRef, validate_params

pytestmark = pytest.mark.slow

SENTENCE = (
    "The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the capital of Italy is Rome."
)


@pytest.fixture(scope="module")
def embedded():
    return models.resolve(ModelRef("embedded:smollm2-135m"))


@pytest.mark.parametrize(
    ("method", "params", "max_bits"),
    [
        ("bnb", {"bits": 4}, 8),
        ("torchao", {"bits": 8}, 12),
        ("quanto", {"weights": "int4"}, 8),
        ("hqq", {"nbits": 4}, 8),
        ("gptq", {"bits": 4, "n_samples": 16}, 8),
        ("awq", {"n_samples": 16}, 8),
    ],
)
def test_quantized_embedded_model_still_predicts_text(embedded, method, params, max_bits):
    backend = get_backend(method)
    availability = backend.check("cpu")
    if not availability.ok:
        pytest.skip(availability.reason)
    q = backend.quantize(embedded, validate_params(backend.Params, params, method), "cpu")
    ids = q.tokenizer(SENTENCE, return_tensors="pt").input_ids
    logits = q.logits(ids)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert loss < 5, f"{method} {params}: loss {loss:.2f} nats ({q.kernel})"
    # The tied embedding (21% of the weights) stays bf16: 4-bit methods land near 7 bits/weight here.
    assert 1 < q.bits_per_weight < max_bits
