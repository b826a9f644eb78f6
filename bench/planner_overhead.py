"""Measure the two CPU figures the planner needs to compare its estimate with process RSS.

1. Runtime overhead: the resident memory of a quantbench worker process before any real weights
   exist (estimate.CPU_RUNTIME_BYTES). The stages show where it comes from (torch, transformers,
   one tiny forward, the runner/results/evals imports); the figure itself is what a worker holds
   once it has done everything a trial does except hold a real model: resolved the model, loaded
   its tokenizer, imported the method's library and run a forward through a tiny model quantized
   by it (whose own weight bytes are subtracted), then released its freed heap as the runner does
   before each eval. Measured per method; the planner takes the median.
2. Heap factor: how much the peak RSS grows during a prefill forward pass, divided by the
   planner's live-tensor peak for that pass (estimate.CPU_HEAP_FACTOR). Activations of a few MiB
   to 32 MiB come from glibc's heap, which keeps freed temporaries resident, so RSS grows by more
   than the tensors alive at any one time. Shapes are chosen so every activation tensor stays
   below glibc's 32 MiB mmap threshold; larger ones are mmapped and returned on free.

Each figure is taken in a fresh interpreter (a subprocess), so this script's own imports do not
leak into it (ru_maxrss survives exec). Run: `.venv/bin/python bench/planner_overhead.py`; copy the
medians into quantbench/planner/estimate.py with the date and versions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys

from quantbench.planner.calibrate import CPU_METHODS
from quantbench.planner.config import architecture_from_config
from quantbench.planner.estimate import Workload, layer_activation_bytes
from quantbench.planner.formats import weight_format

# Stages, cumulative: what a quantbench worker process holds before the model's weights arrive.
STAGES = {
    "python": "pass",
    "import torch": "import torch",
    "import torch, transformers": "import torch, transformers",
    "+ tiny Llama forward": """
import torch, transformers
cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
model = transformers.LlamaForCausalLM(cfg).eval()
with torch.inference_mode():
    model(torch.zeros(1, 16, dtype=torch.long))
""",
}
# What a quantbench trial worker also imports (runner, results store, evals: pandas, pyarrow,
# duckdb, ...) before it loads a model.
STAGES["+ quantbench worker imports"] = STAGES["+ tiny Llama forward"] + "\nimport quantbench.runner.worker\n"

# The worker runtime of one method (argv[1], a method spec): see the module docstring.
WORKER_RUNTIME = """
import json, sys, tempfile, psutil, torch, transformers
import quantbench.runner.worker
from quantbench import models
from quantbench.backends.base import weight_bytes
from quantbench.backends.registry import get_backend
from quantbench.trackers.memory import code_file_rss, release_freed_heap
from quantbench.spec import MethodSpec, ModelRef

method = MethodSpec.parse(sys.argv[1])
path = tempfile.mkdtemp()
tokenizer = models.load_tokenizer(models.resolve(ModelRef("embedded:smollm2-135m")))
cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
transformers.LlamaForCausalLM(cfg).save_pretrained(path)
tokenizer.save_pretrained(path)
backend = get_backend(method.name)
params = backend.Params.model_validate(method.params)
model = backend.quantize(models.resolve(ModelRef(path)), params, "cpu", None)
model.logits(torch.zeros(1, 16, dtype=torch.long))
release_freed_heap()
print(json.dumps({"runtime": psutil.Process().memory_info().rss - weight_bytes(model.module),
                  "code": sum(code_file_rss().values())}))
"""
REPORT = """
import json, resource, psutil
print(json.dumps({"rss": psutil.Process().memory_info().rss,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

# A random Llama of ~156M parameters; one thread, so the figure does not depend on the core count.
LLAMA = dict(
    model_type="llama",
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)
PREFILL = """
import json, resource, sys, torch, transformers
torch.set_num_threads(1)
cfg = json.loads(sys.argv[1]); tokens = int(sys.argv[2]); dtype = getattr(torch, sys.argv[3])
with torch.device("meta"):
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
model = model.to_empty(device="cpu").to(dtype).eval()
for p in model.parameters():
    p.data.normal_(0, 0.02)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.inference_mode():
    model(torch.randint(0, cfg["vocab_size"], (1, tokens)), logits_to_keep=1, use_cache=False)
print(json.dumps({"growth": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}))
"""
PREFILLS = [(2048, "bfloat16"), (4096, "bfloat16"), (2048, "float32")]


def run_child(code: str, *argv: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtime-only", action="store_true", help="skip the (slow) prefill heap-factor runs")
    args = parser.parse_args()
    # Versions from metadata: importing torch here would raise the children's inherited peak RSS.
    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("torch", "transformers"))
    print(f"python {platform.python_version()}, {versions}")
    print(f"{'stage':<28} {'RSS MiB (median)':>17} {'peak MiB (median)':>18}")
    for name, code in STAGES.items():
        runs = [run_child(code + "\n" + REPORT) for _ in range(args.repeats)]
        rss = statistics.median(r["rss"] for r in runs)
        peak = statistics.median(r["peak"] for r in runs)
        print(f"{name:<28} {rss / 2**20:>17.1f} {peak / 2**20:>18.1f}   ({int(rss)} B)")
    print(f"\n{'worker runtime, by method':<28} {'RSS MiB (median)':>17} {'of it code MiB':>15}")
    runtimes, codes = [], []
    for method in CPU_METHODS:
        runs = [run_child(WORKER_RUNTIME, method) for _ in range(args.repeats)]
        runtimes.append(statistics.median(r["runtime"] for r in runs))
        codes.append(statistics.median(r["code"] for r in runs))
        print(f"{method:<28} {runtimes[-1] / 2**20:>17.1f} {codes[-1] / 2**20:>15.1f}   ({int(runtimes[-1])} B)")
    runtime, code = statistics.median(runtimes), statistics.median(codes)
    print(f"CPU runtime term, median of methods: {runtime / 2**20:.1f} MiB ({int(runtime)} B)")
    print(f"of it resident code pages (shared libraries), median: {code / 2**20:.1f} MiB ({int(code)} B)")
    if args.runtime_only:
        return 0

    arch = architecture_from_config(LLAMA, "random-llama-156m")
    print(f"\n{'prefill (1 thread)':<28} {'RSS growth MiB':>17} {'planner live MiB':>18} {'factor':>7}")
    factors = []
    for tokens, dtype in PREFILLS:
        growth = statistics.median(
            run_child(PREFILL, json.dumps(LLAMA), str(tokens), dtype)["growth"] for _ in range(args.repeats)
        )
        live = layer_activation_bytes(arch, weight_format("baseline", {"dtype": dtype}), Workload(tokens))
        factors.append(growth / live)
        print(f"{f'{tokens} tokens {dtype}':<28} {growth / 2**20:>17.1f} {live / 2**20:>18.1f} {factors[-1]:>7.2f}")
    print(f"heap factor, median: {statistics.median(factors):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
