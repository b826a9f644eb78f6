"""A store filled with synthetic trials (builders in rows.py)."""

from __future__ import annotations

import pytest
from rows import fill, trial


@pytest.fixture
def mixed_store(tmp_path):
    """A baseline, two quantized trials of the same model, a failed one, and one on another corpus."""
    return fill(
        tmp_path,
        trial("base", metrics={"perplexity": 10.0, "weight_bytes": 4 * 2**20, "bits_per_weight": 32,
                               "decode_tokens_per_second": 50.0, "kld_mean": 0.0, "top1_agreement": 100.0}),
        trial("bnb4", "bnb", {"bits": 4, "quant_type": "nf4"}, day=1,
              metrics={"perplexity": 11.0, "weight_bytes": 2**20, "bits_per_weight": 4.5,
                       "decode_tokens_per_second": 75.0, "kld_mean": 0.05, "top1_agreement": 90.0}),
        trial("hqq2", "hqq", {"nbits": 2}, day=2, metrics={"perplexity": 30.0, "weight_bytes": 0.6 * 2**20,
                                                            "bits_per_weight": 2.5}),
        trial("broke", "gptq", {"bits": 3}, day=3, error="RuntimeError: out of memory"),
        trial("wiki", "quanto", {"weights": "int8"}, day=4, corpus="wikitext2",
              metrics={"perplexity": 12.0, "weight_bytes": 2 * 2**20, "bits_per_weight": 8}),
    )  # fmt: skip
