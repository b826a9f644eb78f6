"""The transformers caches quantbench builds (engines/kv_cache.py), driven directly with random K/V."""

import pytest
import torch
from transformers import LlamaConfig

from quantbench.engines.kv_cache import KvCache, transformers_cache

# 3 K/V heads of 16 channels, one group per head and token: an odd row count at every odd length.
CONFIG = LlamaConfig(num_hidden_layers=1, hidden_size=48, num_attention_heads=3, num_key_value_heads=3)


def _keys(tokens: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 3, tokens, 16) * torch.linspace(0.2, 4.0, 16)  # outlier channels, as keys have


def _read_back(kv: KvCache, keys: torch.Tensor, prefill: int) -> torch.Tensor:
    """The first `prefill` keys as the cache returns them after the rest was added one token per update."""
    layer = transformers_cache(kv, CONFIG).layers[0]
    layer.update(keys[:, :, :prefill], keys[:, :, :prefill])
    for t in range(prefill, keys.shape[2]):
        returned, _ = layer.update(keys[:, :, t : t + 1], keys[:, :, t : t + 1])
    return returned[:, :, :prefill]


@pytest.mark.parametrize("backend", ["quanto", "hqq"])
def test_growing_the_cache_does_not_compound_the_rounding(backend):
    # Every update re-quantizes the whole cache: a token's K/V must round the same each time.
    kv = KvCache(backend, "int4", 16)
    keys = _keys(41)
    once = _read_back(kv, keys[:, :, :9], 8)  # quantized once
    grown = _read_back(kv, keys, 8)  # re-quantized 33 times, through odd row counts
    error_once = (once - keys[:, :, :8]).norm() / keys[:, :, :8].norm()
    error_grown = (grown - keys[:, :, :8]).norm() / keys[:, :, :8].norm()
    assert 0 < error_once < 0.2
    assert error_grown < 1.25 * error_once
