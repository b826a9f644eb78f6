"""Every weight tensor of an architecture, grouped by shape and role.

Quantization libraries replace `nn.Linear` layers inside the decoder blocks and keep the rest
(embeddings, the output head, norms, biases, MoE routers) in the compute dtype, so each group
says which of those it is. Routed experts are a kind of their own: transformers 5 stores them as
fused 3-D tensors, which only some methods quantize (`Backend.layer_kinds`). Shapes are (rows, cols)
= (out_features, in_features) as in `nn.Linear.weight`; a norm or bias is one row.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantbench.errors import QuantbenchError
from quantbench.planner.config import Architecture

KINDS = ("linear", "experts", "embedding", "lm_head", "norm", "bias", "router")


@dataclass(frozen=True)
class WeightGroup:
    """`count` tensors of shape (rows, cols) with the same role, e.g. all 32 q_proj weights."""

    name: str
    rows: int
    cols: int
    count: int
    kind: str
    first_layer: int = 0  # the decoder block of a per-block group's first tensor (MoE blocks follow the dense ones)
    per_block: int = 1  # tensors of the group in each block (routed experts: one per expert)

    @property
    def numel(self) -> int:
        return self.rows * self.cols * self.count

    def module_names(self) -> list[str]:
        """The transformers module name of each tensor of a per-block group, in the llama family's
        spelling (attention under `self_attn`, MLPs under `mlp`): `model.layers.3.self_attn.q_proj`."""
        module = self.name.removeprefix("layers.")
        if not module.startswith("mlp."):
            module = f"self_attn.{module}"
        return [f"model.layers.{self.first_layer + i // self.per_block}.{module}" for i in range(self.count)]


def _attention(arch: Architecture) -> list[tuple[str, int, int, str]]:
    h, d = arch.hidden_size, arch.head_dim
    if arch.is_mla:
        # DeepSeek-V2/V3 attention (transformers' DeepseekV2Attention): queries optionally through a
        # low-rank bottleneck; keys/values compressed into one latent of kv_lora_rank plus a shared
        # rope key, then expanded per head by kv_b_proj.
        qk = arch.qk_nope_head_dim + arch.qk_rope_head_dim
        if not (qk and arch.v_head_dim):
            raise QuantbenchError(
                f"{arch.name}: kv_lora_rank is set, so qk_nope_head_dim, qk_rope_head_dim and v_head_dim are needed too"
            )
        if arch.q_lora_rank:
            q = [
                ("q_a_proj", arch.q_lora_rank, h, "linear"),
                ("q_a_layernorm", 1, arch.q_lora_rank, "norm"),
                ("q_b_proj", arch.num_heads * qk, arch.q_lora_rank, "linear"),
            ]
        else:
            q = [("q_proj", arch.num_heads * qk, h, "linear")]
        return [
            *q,
            ("kv_a_proj_with_mqa", arch.kv_lora_rank + arch.qk_rope_head_dim, h, "linear"),
            ("kv_a_layernorm", 1, arch.kv_lora_rank, "norm"),
            ("kv_b_proj", arch.num_heads * (arch.qk_nope_head_dim + arch.v_head_dim), arch.kv_lora_rank, "linear"),
            ("o_proj", h, arch.num_heads * arch.v_head_dim, "linear"),
        ]
    q_out, kv_out = arch.num_heads * d, arch.num_kv_heads * d
    groups = [
        ("q_proj", q_out, h, "linear"),
        ("k_proj", kv_out, h, "linear"),
        ("v_proj", kv_out, h, "linear"),
        ("o_proj", h, q_out, "linear"),
    ]
    if arch.qkv_bias:
        groups += [("q_proj.bias", 1, q_out, "bias"), ("k_proj.bias", 1, kv_out, "bias")]
        groups += [("v_proj.bias", 1, kv_out, "bias")]
    if arch.qk_norm:
        groups += [("q_norm", 1, d, "norm"), ("k_norm", 1, d, "norm")]
    return groups


def _mlp(prefix: str, hidden: int, inter: int) -> list[tuple[str, int, int, str]]:
    # Gated MLP: down(act(gate(x)) * up(x)); Phi-3 fuses gate and up into one matrix of the same size.
    return [
        (f"{prefix}gate_proj", inter, hidden, "linear"),
        (f"{prefix}up_proj", inter, hidden, "linear"),
        (f"{prefix}down_proj", hidden, inter, "linear"),
    ]


def weight_groups(arch: Architecture) -> tuple[WeightGroup, ...]:
    """All weight tensors of the model; tied output heads are counted once (as the embedding)."""
    h, n = arch.hidden_size, arch.num_layers
    groups = [WeightGroup("embed_tokens", arch.vocab_size, h, 1, "embedding")]
    per_layer = [*_attention(arch), ("norms", 1, h * arch.norms_per_layer, "norm")]
    groups += [WeightGroup(f"layers.{name}", r, c, n, kind) for name, r, c, kind in per_layer]
    moe_layers = n - arch.first_dense_layers if arch.is_moe else 0
    dense_layers = n - moe_layers
    if dense_layers:
        groups += [
            WeightGroup(f"layers.mlp.{name}", r, c, dense_layers, kind)
            for name, r, c, kind in _mlp("", h, arch.intermediate_size)
        ]
    if moe_layers:
        # Mixtral sizes its experts with intermediate_size; DeepSeek with moe_intermediate_size.
        inter = arch.moe_intermediate_size or arch.intermediate_size
        first = dense_layers
        groups.append(WeightGroup("layers.mlp.router", arch.num_experts, h, moe_layers, "router", first))
        groups += [
            WeightGroup(f"layers.mlp.{name}", r, c, moe_layers * arch.num_experts, "experts", first, arch.num_experts)
            for name, r, c, _ in _mlp("experts.", h, inter)
        ]
        if arch.num_shared_experts:  # DeepSeek runs its shared experts as one wider MLP
            groups += [
                WeightGroup(f"layers.mlp.{name}", r, c, moe_layers, kind, first)
                for name, r, c, kind in _mlp("shared_experts.", h, inter * arch.num_shared_experts)
            ]
    groups.append(WeightGroup("norm", 1, h, 1, "norm"))
    if not arch.tie_embeddings:
        groups.append(WeightGroup("lm_head", arch.vocab_size, h, 1, "lm_head"))
    return tuple(groups)


def parameter_count(arch: Architecture) -> int:
    return sum(g.numel for g in weight_groups(arch))
