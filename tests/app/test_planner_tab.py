"""The Planner tab's handler: the fine-tune controls reach the planner's fine-tune mode."""

import gradio as gr

from quantbench.app.ui import planner_tab

INFERENCE = ["llama-2-7b", "bnb", 4, 0, "bfloat16", 512, 1, "fp16", 0, "sdpa", "cuda", None]


def handler(tmp_path):
    with gr.Blocks():
        plan, _, _ = planner_tab.build(tmp_path)["load"]
    return plan


def test_finetune_controls_price_a_lora_step(tmp_path):
    plan = handler(tmp_path)
    summary, table, _, _, error = plan(*INFERENCE, True, 8, "q, v", True)
    assert error["visible"] is False
    assert "one LoRA training step of batch 1 × 512 tokens" in summary
    assert {"LoRA adapters", "gradients", "optimizer"} <= set(table["component"])
    assert "r=8 on q,v" in table.set_index("component").loc["LoRA adapters", "note"]
    summary, table, _, _, _ = plan(*INFERENCE, False, 8, "q, v", True)
    assert "KV cache fp16" in summary and "LoRA adapters" not in set(table["component"])


def test_a_rank_larger_than_the_layer_shows_one_line(tmp_path):
    *_, error = handler(tmp_path)(*INFERENCE, True, 5000, "q", False)
    assert error["visible"] is True
    assert "lora rank 5000 exceeds q_proj&#x27;s smaller side (4096 × 4096) in llama-2-7b" in error["value"]
