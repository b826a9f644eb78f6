"""The architecture matrix's models and cells, shared by tests/backends/test_architectures.py (which
states what each cell must be) and bench/architectures.py (which prints README's table of them).

A cell is one method on one tiny random model: {"refusal": its one line, or "", "fraction": the
quantized_weight_fraction of the quantized model, "finite": whether its logits are}. GPTQModel's
methods run in a fresh interpreter per method (`gptqmodel_cells`): GPTQModel (through defuser) swaps
an architecture's MoE classes for the whole process when it first loads one, which would change what
later cells build. Each architecture is loaded once per interpreter, so each cell sees transformers'
own classes until its own load, as a trial does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from support import INPUT_IDS

from quantbench import models
from quantbench.backends.registry import get_backend
from quantbench.errors import QuantbenchError
from quantbench.spec import ModelRef, validate_params

# 4 KV heads, so k/v projections are 64 wide: AWQ's clip search takes outputs in blocks of 64.
COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
              max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
              pad_token_id=0)  # fmt: skip
CONFIGS = {
    "llama": dict(model_type="llama", intermediate_size=128, **COMMON),
    "qwen2": dict(model_type="qwen2", intermediate_size=128, **COMMON),
    "mistral": dict(model_type="mistral", intermediate_size=128, sliding_window=32, **COMMON),
    "phi3": dict(model_type="phi3", intermediate_size=128, **COMMON),
    "gemma2": dict(model_type="gemma2", intermediate_size=128, head_dim=16, sliding_window=32, **COMMON),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=0),
    "mixtral": dict(model_type="mixtral", intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, **COMMON),
    "qwen2_moe": dict(model_type="qwen2_moe", intermediate_size=128, moe_intermediate_size=64, num_experts=4,
                      shared_expert_intermediate_size=64, num_experts_per_tok=2, decoder_sparse_step=1, **COMMON),
}  # fmt: skip
ARCHITECTURES = tuple(CONFIGS)
# The methods that run in the test process, and those GPTQModel runs (one interpreter each).
METHODS = ["baseline", "rtn", "triton", "hqq", "dynamic", "bnb:bits=4", "bnb:bits=8", "quanto", "quanto:weights=int4",
           "torchao", "torchao:bits=4", "gguf"]  # fmt: skip
GPTQMODEL_METHODS = ["gptq", "awq"]
GPTQMODEL_PARAMS = {"n_samples": 4, "seq_len": 32}
# The tiny GGUFs (tests/tiny_gguf.py) gguf runs instead of the transformers directories it refuses.
GGUF_EXPERTS = {"llama": 0, "mixtral": 4}
GGUF_QUANT_TYPE = "Q4_K_M"


def write_architectures(root: Path, tokenizer) -> dict[str, models.ResolvedModel]:
    """Each architecture of CONFIGS as a saved random model (seed 0) with `tokenizer`, resolved."""
    from transformers import AutoConfig, AutoModelForCausalLM

    resolved = {}
    for arch, raw in CONFIGS.items():
        config = dict(raw, vocab_size=len(tokenizer))
        torch.manual_seed(0)
        module = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
        path = root / arch
        module.save_pretrained(path)
        tokenizer.save_pretrained(path)
        resolved[arch] = models.resolve(ModelRef(str(path)))
    return resolved


def write_gguf_architectures(root: Path, tokenizer) -> dict[str, Path]:
    """The tiny GGUFs of GGUF_EXPERTS, written under `root`."""
    from tiny_gguf import write_tiny_gguf

    return {arch: write_tiny_gguf(root / f"{arch}.gguf", tokenizer, experts=n) for arch, n in GGUF_EXPERTS.items()}


def gguf_cell(path: Path) -> dict:
    """gguf on the GGUF file `path`, or the one line that refuses the file as a source (quantbench's cache
    must be private to the caller: resolving writes the file's dequantized copy there)."""
    try:
        model = models.resolve(ModelRef(str(path)))
    except QuantbenchError as exc:
        return {"refusal": str(exc), "fraction": None, "finite": None}
    return cell(f"gguf:quant_type={GGUF_QUANT_TYPE}", model)


def cell(method: str, model: models.ResolvedModel) -> dict:
    """`method` (name:key=value,...) on `model`, in this process."""
    name, _, raw = method.partition(":")
    backend = get_backend(name)
    params = validate_params(backend.Params, dict(kv.split("=") for kv in raw.split(",") if kv), name)
    refusal = backend.refusal(model, params, "cpu")
    if refusal:
        return {"refusal": refusal, "fraction": None, "finite": None}
    quantized = backend.quantize(model, params, "cpu")
    finite = bool(torch.isfinite(quantized.logits(INPUT_IDS)).all())
    return {"refusal": "", "fraction": quantized.coverage.fraction, "finite": finite}


GPTQMODEL_SCRIPT = """
import json, sys
from architecture_cells import GPTQMODEL_PARAMS, cell
from quantbench import models
from quantbench.spec import ModelRef
method = sys.argv[1] + ":" + ",".join(f"{k}={v}" for k, v in GPTQMODEL_PARAMS.items())
for path in sys.argv[2:]:
    print("CELL " + json.dumps(cell(method, models.resolve(ModelRef(path)))), flush=True)
"""


def gptqmodel_cells(method: str, paths: list[Path]) -> list[dict]:
    """`method`'s cells on each of `paths`, in that order, in one fresh interpreter."""
    run = subprocess.run([sys.executable, "-c", GPTQMODEL_SCRIPT, method, *map(str, paths)],
                         capture_output=True, text=True, timeout=900, check=False,
                         env=_with_tests_on_path())  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"{method} cells failed:\n{run.stderr[-2000:]}")
    return [json.loads(line[5:]) for line in run.stdout.splitlines() if line.startswith("CELL ")]


def _with_tests_on_path() -> dict[str, str]:
    """This environment, with this directory first on PYTHONPATH (kept: it may name a worktree's checkout)."""
    inherited = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), inherited) if p)}
