"""`QuantExperts`: transformers' fused MoE experts with each expert's matrices in quantbench's packed format.

transformers 5 holds the routed experts of an MoE block in one module with a 3-D parameter per
projection (`gate_up_proj` or `up_proj`, then `down_proj`; biases as `<name>_bias`), and every experts
implementation it dispatches to (`transformers.integrations.moe.use_experts_implementation`: eager,
batched_mm, grouped_mm) keeps one forward contract: (hidden_states (T, H), top_k_index (T, k),
top_k_weights (T, k)) -> (T, H). This module keeps that contract and runs the rows routed to each
expert through that expert's `QuantLinear`, so the Triton kernels (or their reference) do every
expert matmul from packed weights; nothing is dequantized into a 3-D float tensor.

What is not a matrix stays with the original module, kept as `fused` without its matrices: the gate
(`_apply_gate`: SwiGLU over [gate; up] by default, GPT-OSS's clamped variant over interleaved
columns), the activation, and the optional post-expert norm, so every architecture's own arithmetic runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from quantbench.kernels.quant_linear import QuantLinear


class QuantExperts(nn.Module):
    """A drop-in for a transformers fused experts module; `projections` maps each 3-D parameter's name
    to one QuantLinear per expert (bias included), and those parameters leave `fused`."""

    def __init__(self, fused: nn.Module, projections: dict[str, Sequence[QuantLinear]]) -> None:
        super().__init__()
        for name, layers in projections.items():
            for attribute in (name, f"{name}_bias"):
                if hasattr(fused, attribute):
                    delattr(fused, attribute)
            setattr(self, name, nn.ModuleList(layers))
        self.fused = fused

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        fused = self.fused
        up = self.gate_up_proj if fused.has_gate else self.up_proj
        # The weighted sum over each token's experts accumulates in fp32, as transformers' grouped and
        # batched implementations do, so a low-precision compute dtype loses nothing there.
        out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
        for expert in top_k_index.unique().tolist():
            token, slot = torch.where(top_k_index == expert)
            hidden = up[expert](hidden_states[token])
            hidden = fused._apply_gate(hidden) if fused.has_gate else fused.act_fn(hidden)
            hidden = self.down_proj[expert](hidden)
            if fused.has_post_expert_norm:
                hidden = fused.post_expert_norm(hidden)
            out.index_add_(0, token, hidden.float() * top_k_weights[token, slot, None].float())
        return out.to(hidden_states.dtype)
