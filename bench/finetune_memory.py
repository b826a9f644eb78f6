"""Check the planner's fine-tune mode against a real QLoRA step on this machine's CPU.

Each case runs in a fresh interpreter: SmolLM2-135M (the embedded model) loaded in nf4 by bitsandbytes
(bf16 compute), LoRA adapters from peft on the chosen projections, one AdamW step on a window of
WikiText-2 (or the builtin corpus) — forward, backward, optimizer step. It reports the process's RSS
peak during the step (the kernel's high-water mark, trackers/memory.py) and how much the step added
to the RSS before it, beside `quantbench plan --finetune lora` for the same case: the whole peak
against the plan's total, and the step's growth against the plan's gradients + optimizer +
activations (what a step allocates; the weights, adapters and runtime exist before it).

Run: `.venv/bin/python bench/finetune_memory.py`; docs/planner.md holds its table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time

from quantbench.planner.estimate import Workload
from quantbench.planner.finetune import TARGETS, Lora
from quantbench.planner.plan import make_plan

MODEL = "embedded:smollm2-135m"
CASES = [  # (sequence length, batch, rank, gradient checkpointing)
    (256, 1, 8, False),
    (512, 1, 8, False),
    (512, 1, 8, True),
    (256, 2, 16, False),
]
STEP_PARTS = ("gradients", "optimizer", "activations")


def child(seq_len: int, batch: int, rank: int, checkpointing: bool) -> dict:
    """One QLoRA step in this process; its RSS before, its peak during the step, and its time."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from quantbench import models
    from quantbench.backends.base import calibration_windows
    from quantbench.spec import ModelRef
    from quantbench.trackers.memory import PeakMemory, _rss_and_file_bytes, release_freed_heap

    resolved = models.resolve(ModelRef(MODEL))
    tokenizer = models.load_tokenizer(resolved)
    ids = calibration_windows("builtin", tokenizer, batch, seq_len)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    module = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=torch.bfloat16, quantization_config=config, device_map={"": "cpu"}
    )
    if checkpointing:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        module.enable_input_require_grads()
    targets = [TARGETS[t] for t in TARGETS]
    module = get_peft_model(module, LoraConfig(r=rank, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM"))
    module.train()
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    release_freed_heap()
    before = _rss_and_file_bytes()[0]
    start = time.perf_counter()
    with PeakMemory() as memory:
        loss = module(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
    return {
        "rss_before": before,
        "peak": memory.peak.rss_bytes,
        "seconds": time.perf_counter() - start,
        "trainable": sum(p.numel() for p in trainable),
        "loss": loss.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("SEQ", "BATCH", "RANK", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        seq, batch, rank, ckpt = args.child
        print(json.dumps(child(int(seq), int(batch), int(rank), ckpt == "1")))
        return
    versions = {d: importlib.metadata.version(d) for d in ("torch", "transformers", "peft", "bitsandbytes")}
    print(" ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"{'seq':>5} {'batch':>5} {'r':>3} {'ckpt':>5} {'trainable':>10} {'peak MiB':>9} {'plan MiB':>9} {'error':>7}"
        f" {'step MiB':>9} {'plan MiB':>9} {'error':>7} {'step s':>7}"
    )
    for seq, batch, rank, ckpt in CASES:
        run = subprocess.run(
            [sys.executable, __file__, "--child", str(seq), str(batch), str(rank), "1" if ckpt else "0"],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(run.stdout.strip().splitlines()[-1])
        lora = Lora(rank=rank, grad_checkpointing=ckpt)
        plan = make_plan(MODEL, "bnb", {"bits": 4}, Workload(seq, batch=batch, device="cpu"), None, lora).estimate
        step_plan = sum(plan.part(p) for p in STEP_PARTS)
        step = measured["peak"] - measured["rss_before"]
        mib = 2**20
        peak_error = 100 * (plan.total / measured["peak"] - 1)
        print(
            f"{seq:>5} {batch:>5} {rank:>3} {ckpt!s:>5} {measured['trainable']:>10,} "
            f"{measured['peak'] / mib:>9.1f} {plan.total / mib:>9.1f} {peak_error:>+6.1f}%"
            f" {step / mib:>9.1f} {step_plan / mib:>9.1f} {100 * (step_plan / step - 1):>+6.1f}%"
            f" {measured['seconds']:>7.1f}"
        )


if __name__ == "__main__":
    main()
