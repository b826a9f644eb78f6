"""The planner's fine-tune mode (LoRA / QLoRA): adapter counts, optimizer and gradient bytes and saved
activations, by hand and against what autograd really keeps on a tiny nf4 model with peft adapters."""

from __future__ import annotations

import pytest
import torch
from support import build_tiny_llama

from quantbench.app.cli import main
from quantbench.errors import QuantbenchError
from quantbench.planner.config import architecture_from_config
from quantbench.planner.estimate import CPU_RUNTIME_BYTES, CUDA_RUNTIME_BYTES, Workload
from quantbench.planner.estimate import weight_bytes as base_weight_bytes
from quantbench.planner.finetune import TARGETS, Lora, adapter_params, finetune_estimate, saved_per_token
from quantbench.planner.formats import weight_format
from quantbench.planner.gpus import find_gpu
from quantbench.planner.plan import make_plan
from quantbench.planner.presets import preset

SMOL = preset("smollm2-135m")  # h 576, intermediate 1536, 9 heads / 3 KV heads × 64, 30 layers, vocab 49152
NF4 = weight_format("bnb", {"bits": 4})


def test_adapter_count_by_hand():
    # Per layer, r × (in + out): q 576+576, k 576+192, v 576+192, o 576+576, gate/up/down 576+1536 each.
    per_layer = 8 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert per_layer == 81_408
    # 2.44 M: what peft reports for SmolLM2-135M with r = 8 on every projection.
    assert adapter_params(SMOL, Lora(8)) == 30 * per_layer == 2_442_240
    assert adapter_params(SMOL, Lora(16, ("q", "v"))) == 30 * 16 * ((576 + 576) + (576 + 192))


def test_saved_activations_by_hand():
    # bf16, r = 8, all seven projections, per token of one block:
    adapters = 4 * (5 * 576 + 576 + 1536) + 7 * 4 * 8  # float32 inputs of the adapters + A outputs
    norms = 2 * (4 * 576 + 4)
    attention = 2 * (2 * 576 + 2 * 192) + 4 * 9  # q, k, v, output; log-sum-exp per head
    mlp = 3 * 2 * 1536
    assert saved_per_token(SMOL, 2, Lora(8)) == adapters + norms + attention + mlp == 37_132
    # Computing in float32, the adapters' inputs are the tensors already kept: no copies.
    assert saved_per_token(SMOL, 4, Lora(8)) == 7 * 4 * 8 + norms + 4 * (2 * 576 + 2 * 192) + 4 * 9 + 3 * 4 * 1536


def test_a_qlora_step_by_hand():
    est = finetune_estimate(SMOL, NF4, Workload(256, device="cuda"), Lora(8))
    params = 2_442_240
    assert est.part("LoRA adapters") == est.part("gradients") == 4 * params
    assert est.part("optimizer") == 8 * params
    w = base_weight_bytes(SMOL, NF4)
    assert est.part("weights quantized") == w.quantized and est.part("weights kept") == w.kept
    logits = 256 * 49152 * (2 + 12)
    assert est.part("activations") == 256 * (30 * 37_132 + 4 * 576 + 4) + logits
    assert est.part("runtime") == CUDA_RUNTIME_BYTES
    assert est.total == w.total + 16 * params + est.part("activations") + CUDA_RUNTIME_BYTES
    assert "KV cache" not in {c.name for c in est.components}


def test_checkpointing_keeps_block_inputs_and_one_block():
    plain = finetune_estimate(SMOL, NF4, Workload(512, batch=2, device="cpu"), Lora(8))
    ckpt = finetune_estimate(SMOL, NF4, Workload(512, batch=2, device="cpu"), Lora(8, grad_checkpointing=True))
    logits = 1024 * 49152 * 14
    assert ckpt.part("activations") == 1024 * (30 * 2 * 576 + 37_132 + 2308) + logits
    assert plain.part("activations") - ckpt.part("activations") == 1024 * (29 * 37_132 - 30 * 2 * 576)
    assert ckpt.part("runtime") == CPU_RUNTIME_BYTES


def test_the_seeds_table_at_int4():
    """7B / 13B / 70B at NF4 with double quantization + LoRA r = 8 on q and v, gradient checkpointing, one
    sequence of 512 tokens, on CUDA: the setting where the seeds' "~5 / ~8 / ~40 GB" hold (docs/planner.md)."""
    nf4_dq = weight_format("bnb", {"bits": 4, "double_quant": True})
    lora = Lora(8, ("q", "v"), grad_checkpointing=True)
    totals = {
        name: finetune_estimate(preset(name), nf4_dq, Workload(512), lora).total / 1e9
        for name in ("llama-2-7b", "llama-2-13b", "llama-2-70b")
    }
    assert totals == pytest.approx({"llama-2-7b": 4.93, "llama-2-13b": 8.40, "llama-2-70b": 38.25}, abs=0.005)


def test_plan_searches_with_the_finetune_price():
    plan = make_plan("llama-3.1-8b", "bnb", {"bits": 4}, Workload(2048), "RTX 4090", Lora(16))
    gpu = find_gpu("RTX 4090")
    assert plan.headroom == gpu.memory_bytes - plan.estimate.total
    at_limit = finetune_estimate(preset("llama-3.1-8b"), NF4, Workload(plan.largest_context), Lora(16))
    past_limit = finetune_estimate(preset("llama-3.1-8b"), NF4, Workload(plan.largest_context + 1), Lora(16))
    assert at_limit.total <= gpu.memory_bytes < past_limit.total


@pytest.mark.parametrize(
    ("lora", "model", "message"),
    [
        (Lora(1024), "smollm2-135m", r"lora rank 1024 exceeds q_proj's smaller side \(576 × 576\) in smollm2-135m"),
        (Lora(577, ("q",)), "smollm2-135m", r"lora rank 577 exceeds q_proj's smaller side"),
        (Lora(0), "smollm2-135m", "lora rank must be a positive integer, got 0"),
        (Lora(8, ("q", "qkv")), "smollm2-135m", "lora targets must be some of q, k, v, o, gate, up, down, got q, qkv"),
        (Lora(8), "mixtral-8x7b", "mixtral-8x7b: the fine-tune mode prices dense Llama-style blocks only"),
    ],
)
def test_bad_input_fails_in_one_line(lora, model, message):
    with pytest.raises(QuantbenchError, match=message) as err:
        make_plan(model, "bnb", {"bits": 4}, Workload(256), None, lora)
    assert "\n" not in str(err.value)


def test_rank_equal_to_the_smaller_side_is_allowed():
    assert adapter_params(SMOL, Lora(192, ("k",))) == 30 * 192 * (576 + 192)


def test_cli_prints_the_breakdown(capsys):
    args = ["plan", "--model", "smollm2-135m", "--method", "bnb:bits=4", "--finetune", "lora", "--context", "256"]
    assert main([*args, "--lora-rank", "4", "--lora-targets", "q,v", "--grad-checkpointing", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "one training step of batch 1 × 256 tokens, device cpu" in out
    assert "r=4 on q,v" in out and "checkpointed: 30 block inputs + one block recomputed" in out


def test_cli_refuses_a_rank_larger_than_the_layer(capsys):
    args = ["plan", "--model", "smollm2-135m", "--method", "bnb:bits=4", "--finetune", "lora", "--lora-rank", "600"]
    assert main(args) != 0
    assert "lora rank 600 exceeds q_proj's smaller side (576 × 576)" in capsys.readouterr().err


def _saved_bytes(hidden: int, inter: int, heads: int, kv_heads: int, layers: int, tokens: int) -> int:
    """Bytes autograd keeps for backward in a tiny nf4 Llama with peft adapters (r = 8, every
    projection), parameter and buffer storages left out."""
    peft = pytest.importorskip("peft")
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    pytest.importorskip("bitsandbytes")
    model = build_tiny_llama(
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=layers,
    )
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        model = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16, quantization_config=config)
    targets = [TARGETS[t] for t in TARGETS]
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=targets, lora_dropout=0.0))
    ids = torch.arange(tokens).reshape(1, tokens) % 500
    with torch.no_grad():  # bitsandbytes repacks its CPU weights on the first call: new parameter storages
        model(input_ids=ids)
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}
    alive = []  # so no storage is freed and its address reused by another saved tensor

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        alive.append(tensor)
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)
    return sum(saved.values())


@pytest.mark.parametrize(("hidden", "inter", "heads", "kv_heads"), [(64, 128, 4, 2), (128, 256, 8, 2)])
def test_saved_per_token_is_what_autograd_keeps(hidden, inter, heads, kv_heads):
    """Two layers minus one layer, at two lengths: the block's bytes per token, as autograd keeps them
    (bitsandbytes' CPU kernels need widths that are multiples of 64)."""

    def per_block_token(tokens):
        return _saved_bytes(hidden, inter, heads, kv_heads, 2, tokens) - _saved_bytes(
            hidden, inter, heads, kv_heads, 1, tokens
        )

    per_token = (per_block_token(64) - per_block_token(32)) / 32
    arch = architecture_from_config(
        {
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "num_hidden_layers": 2,
            "vocab_size": 512,
        },
        "tiny",
    )
    assert per_token == saved_per_token(arch, 2, Lora(8))
