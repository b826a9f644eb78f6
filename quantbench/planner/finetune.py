"""Peak memory of one LoRA fine-tuning step (QLoRA when the base is NF4): the frozen base weights in any
method's layout, the adapters, their gradients and optimizer states, and what the forward pass keeps
for the backward pass.

The runtime modelled is transformers + peft (`get_peft_model` with `LoraConfig(r, target_modules)`):
adapters in float32 (peft's `autocast_adapter_dtype`), AdamW with two float32 states per adapter
weight, the loss over every position, no KV cache. The saved-activation terms were read off
`torch.autograd.graph.saved_tensors_hooks` on a Llama block (bitsandbytes 0.50 nf4 base, peft 0.21,
transformers 5.25, bf16 compute): per token they come to 37,132 bytes for SmolLM2's block with r = 8 on
all seven projections, which `saved_per_token` reproduces exactly. bench/finetune_memory.py checks the
whole estimate against a real step's peak.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantbench.backends.layout import Layout
from quantbench.errors import QuantbenchError
from quantbench.planner.config import Architecture
from quantbench.planner.estimate import CPU_RUNTIME_BYTES, CUDA_RUNTIME_BYTES, Component, Estimate, Workload
from quantbench.planner.estimate import weight_bytes as base_weight_bytes
from quantbench.planner.weights import weight_groups

# Short names people pass (`--lora-targets q,k,v,o`) -> the projection each names in weight_groups.
TARGETS = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
ADAPTER_BYTES = 4  # float32 adapters, gradients and AdamW moments
ADAMW_STATES = 2  # exp_avg and exp_avg_sq per trained weight


@dataclass(frozen=True)
class Lora:
    """LoRA adapters of rank `rank` on the projections named in `targets` (keys of TARGETS), trained
    with AdamW; `grad_checkpointing` keeps only each block's input and recomputes the block in backward."""

    rank: int = 8
    targets: tuple[str, ...] = tuple(TARGETS)
    grad_checkpointing: bool = False

    def validate(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise QuantbenchError(f"lora rank must be a positive integer, got {self.rank!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise QuantbenchError(
                f"lora targets must be some of {', '.join(TARGETS)}, got {', '.join(self.targets) or 'none'}"
            )


def _targeted(arch: Architecture, lora: Lora) -> list:
    """The weight groups that carry an adapter (MoE experts included when their projection is named)."""
    names = {TARGETS[t] for t in lora.targets}
    groups = [g for g in weight_groups(arch) if g.kind == "linear" and g.name.rsplit(".", 1)[-1] in names]
    if not groups:
        raise QuantbenchError(f"{arch.name} has none of the projections {', '.join(sorted(names))} to adapt")
    return groups


def adapter_params(arch: Architecture, lora: Lora) -> int:
    """Trainable weights: r × (in + out) per adapted matrix (A is r × in, B is out × r). A rank above a
    matrix's smaller side adds nothing a full update would not: refused."""
    lora.validate()
    total = 0
    for g in _targeted(arch, lora):
        if lora.rank > min(g.rows, g.cols):
            raise QuantbenchError(
                f"lora rank {lora.rank} exceeds {g.name.rsplit('.', 1)[-1]}'s smaller side "
                f"({g.rows} × {g.cols}) in {arch.name}"
            )
        total += lora.rank * (g.rows + g.cols) * g.count
    return total


def saved_per_token(arch: Architecture, dtype_bytes: int, lora: Lora) -> int:
    """Bytes one decoder block keeps for backward per token (batch 1), with every adapter trainable.

    float32: each RMSNorm's upcast input (+ its rsqrt); each adapted projection's input cast to float32
    for its adapter (none when computing in float32: the cast is a no-op) and the r-wide A output.
    compute dtype: rotated q, rotated k, v and the attention output (SDPA), plus SDPA's float32
    log-sum-exp per head; the MLP's gate output, its activation and the up output. The frozen base
    matmuls keep nothing: their input gradient needs only the weight.
    """
    h, a = arch.hidden_size, dtype_bytes
    q_w, kv_w = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    inter = arch.intermediate_size
    inputs = {"q": h, "k": h, "v": h, "o": q_w, "gate": h, "up": h, "down": inter}
    adapters = sum((inputs[t] * 4 if a != 4 else 0) + 4 * lora.rank for t in lora.targets)
    norms = 2 * (4 * h + 4)
    attention = a * (2 * q_w + 2 * kv_w) + 4 * arch.num_heads
    mlp = 3 * a * inter
    return adapters + norms + attention + mlp


def logits_bytes(arch: Architecture, dtype_bytes: int, tokens: int) -> int:
    """The loss over every position: the logits in the compute dtype (held by the model's output), their
    float32 copy, the float32 log-softmax cross-entropy keeps, and its float32 gradient."""
    return tokens * arch.vocab_size * (dtype_bytes + 3 * 4)


def finetune_estimate(arch: Architecture, fmt: Layout, workload: Workload, lora: Lora) -> Estimate:
    """Peak of one training step of `workload.batch` sequences of `workload.context` tokens."""
    workload = replace(workload, use_cache=False)
    workload.validate()
    if arch.is_moe or arch.is_mla:
        raise QuantbenchError(f"{arch.name}: the fine-tune mode prices dense Llama-style blocks only")
    params = adapter_params(arch, lora)
    w = base_weight_bytes(arch, fmt)
    a = fmt.dtype_bytes
    tokens = workload.batch * workload.context
    block = saved_per_token(arch, a, lora)
    final_norm = 4 * arch.hidden_size + 4
    if lora.grad_checkpointing:
        # Each block keeps its input; backward recomputes one block at a time, holding its full set.
        kept = arch.num_layers * a * arch.hidden_size + block
        how = f"checkpointed: {arch.num_layers} block inputs + one block recomputed"
    else:
        kept = arch.num_layers * block
        how = f"{arch.num_layers} blocks × {block:,} B per token"
    activations = tokens * (kept + final_norm) + logits_bytes(arch, a, tokens)
    components = [
        Component(
            "weights quantized", w.quantized, f"{w.quantized_params / 1e9:.3f} B frozen linear weights, {fmt.label}"
        )
        if fmt.is_quantized
        else None,
        Component("weights kept", w.kept, f"{w.kept_params / 1e9:.3f} B frozen in {fmt.dtype}"),
        Component(
            "LoRA adapters",
            params * ADAPTER_BYTES,
            f"{params / 1e6:.2f} M float32, r={lora.rank} on {','.join(lora.targets)}",
        ),
        Component("gradients", params * ADAPTER_BYTES, "float32, adapters only"),
        Component("optimizer", params * ADAPTER_BYTES * ADAMW_STATES, "AdamW: two float32 moments per adapter weight"),
        Component(
            "activations",
            activations,
            f"{workload.batch} × {workload.context} tokens, {how}, logits over {arch.vocab_size:,} tokens",
        ),
    ]
    if workload.device == "cuda":
        components.append(Component("runtime", CUDA_RUNTIME_BYTES, "CUDA context (outside torch's allocator)"))
    else:
        components.append(Component("runtime", CPU_RUNTIME_BYTES, "python+torch RSS"))
    return Estimate(arch, fmt, workload, tuple(c for c in components if c is not None))
