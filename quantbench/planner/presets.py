"""Bundled architectures of well-known open models, so the planner works with no download.

Each entry holds the fields of the model's public `config.json` on the Hugging Face Hub that
the planner reads, copied as published (repository in the comment). The parameter counts these
give are checked against the published totals in tests/planner/test_config.py.
"""

from __future__ import annotations

from typing import Any

from quantbench.errors import QuantbenchError
from quantbench.planner.config import Architecture, architecture_from_config


def _llama(**fields: Any) -> dict[str, Any]:
    return {"model_type": "llama", "tie_word_embeddings": False, "head_dim": 128, **fields}


def _qwen2(**fields: Any) -> dict[str, Any]:
    # Qwen2.5 configs carry sliding_window but with use_sliding_window false: all layers are global.
    return {
        "model_type": "qwen2",
        "tie_word_embeddings": False,
        "vocab_size": 152064,
        "max_position_embeddings": 131072,
        "sliding_window": 131072,
        "use_sliding_window": False,
        **fields,
    }


PRESETS: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.1-8B
    "llama-3.1-8b": _llama(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
    ),
    # meta-llama/Llama-3.1-70B
    "llama-3.1-70b": _llama(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
    ),
    # meta-llama/Llama-2-7b-hf, -13b-hf, -70b-hf: the models of QLoRA's memory table
    "llama-2-7b": _llama(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "llama-2-13b": _llama(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "llama-2-70b": _llama(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    # Qwen/Qwen2.5-7B
    "qwen2.5-7b": _qwen2(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_window_layers=28,
    ),
    # Qwen/Qwen2.5-32B
    "qwen2.5-32b": _qwen2(
        hidden_size=5120,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
        max_window_layers=64,
    ),
    # Qwen/Qwen2.5-72B
    "qwen2.5-72b": _qwen2(
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_window_layers=80,
    ),
    # mistralai/Mistral-7B-v0.1 (v0.1 attends within a 4096-token window in every layer)
    "mistral-7b": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
    },
    # mistralai/Mixtral-8x7B-v0.1 (sliding_window is null in the published config)
    "mixtral-8x7b": {
        "model_type": "mixtral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    # google/gemma-2-9b (head_dim 256 ≠ hidden/heads; even layers use a 4096-token window)
    "gemma-2-9b": {
        "model_type": "gemma2",
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "sliding_window": 4096,
        "tie_word_embeddings": True,
    },
    # google/gemma-2-27b
    "gemma-2-27b": {
        "model_type": "gemma2",
        "hidden_size": 4608,
        "intermediate_size": 36864,
        "num_hidden_layers": 46,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "head_dim": 128,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "sliding_window": 4096,
        "tie_word_embeddings": True,
    },
    # microsoft/Phi-3-mini-4k-instruct (full multi-head attention: 32 KV heads; window 2047)
    "phi-3-mini": {
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32064,
        "max_position_embeddings": 4096,
        "sliding_window": 2047,
        "tie_word_embeddings": False,
    },
    # HuggingFaceTB/SmolLM2-135M-Instruct: the model behind `embedded:smollm2-135m`
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
    # deepseek-ai/DeepSeek-V2-Lite: multi-head latent attention and shared + routed experts
    "deepseek-v2-lite": {
        "model_type": "deepseek_v2",
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "vocab_size": 102400,
        "max_position_embeddings": 163840,
        "tie_word_embeddings": False,
    },
}


def find_preset(name: str) -> str | None:
    """The preset key for `name`: case-insensitive, ignoring an `org/` prefix and the
    `-Instruct` / `-v0.1` suffixes, so hub ids of the same architecture match."""
    key = name.strip().split("/")[-1].lower().replace("_", "-")
    for suffix in ("-v0.1", "-instruct"):
        key = key.removesuffix(suffix)
    return key if key in PRESETS else None


def preset(name: str) -> Architecture:
    key = find_preset(name)
    if key is None:
        raise QuantbenchError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return architecture_from_config(PRESETS[key], name=key, source=f"preset {key}")
