"""Shared fixtures: a tiny random Llama with a real (small, trained-in-test) tokenizer, and the real
data under ../shared/data that tests and CI may read (helpers in support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import WIKITEXT_TEST, build_tiny_llama, build_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny Llama (random weights, 2 layers, hidden 64) + tokenizer, loadable by path."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(vocab_size=len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_mixtral_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny Mixtral (random weights, 2 layers, 4 fused experts of 64 × 64) + tokenizer."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=256, bos_token_id=0, eos_token_id=0)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-mixtral")
    MixtralForCausalLM(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def wikitext_test() -> Path:
    assert WIKITEXT_TEST.is_file(), f"{WIKITEXT_TEST} missing: tests read the shared data beside the repo"
    return WIKITEXT_TEST
