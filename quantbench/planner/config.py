"""A model's architecture, read from its config.json, as the planner needs it.

The planner counts every weight tensor from these numbers, so the description is exact for the
decoder-only families it knows: Llama-style blocks (q/k/v/o projections, a gated MLP of three
matrices, RMSNorm), optional q/k/v biases (Qwen2), Gemma 2/3's four norms per block, Mixtral- and
DeepSeek-style experts, and DeepSeek's multi-head latent attention (MLA). Field names follow
transformers' config classes; where a config leaves a field out, the default is the one its
config class uses (e.g. `num_key_value_heads` defaults to `num_attention_heads`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")

# transformers' config classes that tie the output head to the embeddings when config.json is
# silent about `tie_word_embeddings` (Gemma*, e.g.); every other family defaults to untied.
TIED_BY_DEFAULT = ("gemma", "gemma2", "gemma3_text")
# Families whose blocks carry pre- and post-norms around both attention and MLP (4 norms).
FOUR_NORMS = ("gemma2", "gemma3_text")
# Families with per-head RMSNorm on queries and keys (head_dim weights each).
QK_NORM = ("qwen3", "qwen3_moe", "gemma3_text", "olmo2")


@dataclass(frozen=True)
class Architecture:
    """What determines a decoder-only model's weight and cache sizes.

    `layer_windows[i]` is the attention window of layer i in tokens, or None for full attention.
    MoE fields are 0 for dense models; MLA fields are 0 unless the model compresses its KV cache.
    """

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    layer_windows: tuple[int | None, ...]
    max_context: int | None = None
    qkv_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    first_dense_layers: int = 0
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def sliding_layers(self) -> int:
        return sum(w is not None for w in self.layer_windows)

    def summary(self) -> str:
        if self.is_mla:
            attn = f"{self.num_heads} heads, MLA latent {self.kv_lora_rank}+{self.qk_rope_head_dim}"
        else:
            attn = f"{self.num_heads} heads / {self.num_kv_heads} KV heads × {self.head_dim}"
        parts = [f"{self.num_layers} layers", f"hidden {self.hidden_size}", attn, f"vocab {self.vocab_size}"]
        if self.is_moe:
            parts.append(f"{self.num_experts} experts (top {self.experts_per_token})")
        if self.sliding_layers:
            windows = sorted({w for w in self.layer_windows if w is not None})
            parts.append(f"{self.sliding_layers} sliding-window layers ({', '.join(map(str, windows))})")
        if self.tie_embeddings:
            parts.append("tied embeddings")
        return ", ".join(parts)


def _positive_int(config: Mapping[str, Any], key: str, source: str, default: Any = None) -> int:
    value = config.get(key, default)
    # bool is an int subclass; a `true` where a size belongs is a broken config, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise QuantbenchError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def _optional_int(config: Mapping[str, Any], key: str, source: str) -> int:
    """A size that may be absent or null (then 0); if present it must be a positive integer."""
    if config.get(key) is None:
        return 0
    return _positive_int(config, key, source)


def _layer_windows(config: Mapping[str, Any], model_type: str, num_layers: int, source: str):
    """Per-layer attention windows, following each family's modeling code in transformers."""
    window = config.get("sliding_window")
    if window is None or config.get("use_sliding_window") is False:
        return (None,) * num_layers
    window = _positive_int(config, "sliding_window", source)
    types = config.get("layer_types")
    if types is not None:
        if len(types) != num_layers:
            raise QuantbenchError(f"{source}: layer_types has {len(types)} entries for {num_layers} layers")
        return tuple(window if t == "sliding_attention" else None for t in types)
    if model_type == "gemma2":  # Gemma2DecoderLayer: even layers slide, odd layers attend globally
        return tuple(window if i % 2 == 0 else None for i in range(num_layers))
    pattern = config.get("sliding_window_pattern")
    if pattern:  # Gemma 3 style: every `pattern`-th layer is global
        return tuple(None if (i + 1) % pattern == 0 else window for i in range(num_layers))
    if model_type == "qwen2":  # Qwen2 slides only from max_window_layers on, when enabled
        first = config.get("max_window_layers", num_layers)
        return tuple(window if i >= first else None for i in range(num_layers))
    return (window,) * num_layers  # Mistral, Mixtral, Phi-3, Starcoder2: every layer slides


def architecture_from_config(config: Mapping[str, Any], name: str, source: str | None = None) -> Architecture:
    """Normalize a transformers config dict; raise QuantbenchError naming any missing or bad field."""
    source = source or name
    if isinstance(config.get("text_config"), Mapping):  # multimodal wrappers keep the LM config inside
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", "")}
    missing = [key for key in REQUIRED if key not in config]
    if missing:
        raise QuantbenchError(f"{source}: config lacks {', '.join(missing)}; the planner needs {', '.join(REQUIRED)}")
    model_type = str(config.get("model_type", ""))
    layers = _positive_int(config, "num_hidden_layers", source)
    hidden = _positive_int(config, "hidden_size", source)
    heads = _positive_int(config, "num_attention_heads", source)
    kv_heads = _positive_int(config, "num_key_value_heads", source, default=heads)
    if heads % kv_heads:
        raise QuantbenchError(f"{source}: num_attention_heads {heads} is not a multiple of KV heads {kv_heads}")
    head_dim = config.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise QuantbenchError(f"{source}: hidden_size {hidden} is not divisible by {heads} heads; set head_dim")
        head_dim = hidden // heads
    num_experts = next(
        (config[k] for k in ("num_local_experts", "n_routed_experts", "num_experts") if config.get(k)), 0
    )
    tie_default = model_type in TIED_BY_DEFAULT
    max_context = config.get("max_position_embeddings")
    return Architecture(
        name=name,
        model_type=model_type,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=_positive_int({"head_dim": head_dim}, "head_dim", source),
        intermediate_size=_positive_int(config, "intermediate_size", source),
        vocab_size=_positive_int(config, "vocab_size", source),
        tie_embeddings=bool(config.get("tie_word_embeddings", tie_default)),
        layer_windows=_layer_windows(config, model_type, layers, source),
        max_context=max_context if isinstance(max_context, int) and max_context > 0 else None,
        qkv_bias=bool(config.get("attention_bias", model_type in ("qwen2", "qwen2_moe"))),
        norms_per_layer=4 if model_type in FOUR_NORMS else 2,
        qk_norm=model_type in QK_NORM,
        num_experts=_positive_int({"n": num_experts}, "n", source) if num_experts else 0,
        experts_per_token=_optional_int(config, "num_experts_per_tok", source) if num_experts else 0,
        moe_intermediate_size=_optional_int(config, "moe_intermediate_size", source),
        num_shared_experts=_optional_int(config, "n_shared_experts", source),
        first_dense_layers=_optional_int(config, "first_k_dense_replace", source),
        kv_lora_rank=_optional_int(config, "kv_lora_rank", source),
        q_lora_rank=_optional_int(config, "q_lora_rank", source),
        qk_nope_head_dim=_optional_int(config, "qk_nope_head_dim", source),
        qk_rope_head_dim=_optional_int(config, "qk_rope_head_dim", source),
        v_head_dim=_optional_int(config, "v_head_dim", source),
    )


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a config.json (or the config.json inside a directory)."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise QuantbenchError(f"no config.json at {path}: pass a model directory or its config.json")
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise QuantbenchError(f"{file} is not valid JSON ({exc}); pass a transformers config.json") from None
    if not isinstance(config, dict):
        raise QuantbenchError(f"{file} holds a JSON {type(config).__name__}, not a config object")
    return config
