"""Measure the CPU runtime overhead the planner adds to its estimate when it is compared with
process RSS: the resident memory of a Python process that has imported torch and transformers
and run one tiny forward pass, before any real model weights exist.

Each figure is taken in a fresh interpreter (a subprocess), so imports made by this script do not
leak into the measurement. Run: `.venv/bin/python bench/planner_overhead.py [--repeats 3]`; the
median goes into quantbench/planner/estimate.py as CPU_RUNTIME_BYTES, with the date and versions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys

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

REPORT = """
import json, resource, psutil
print(json.dumps({"rss": psutil.Process().memory_info().rss,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def measure(code: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\n" + REPORT], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # Versions from metadata: importing torch here would raise the children's inherited peak RSS.
    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("torch", "transformers"))
    print(f"python {platform.python_version()}, {versions}")
    print(f"{'stage':<28} {'RSS MiB (median)':>17} {'peak MiB (median)':>18}")
    for name, code in STAGES.items():
        runs = [measure(code) for _ in range(args.repeats)]
        rss = statistics.median(r["rss"] for r in runs)
        peak = statistics.median(r["peak"] for r in runs)
        print(f"{name:<28} {rss / 2**20:>17.1f} {peak / 2**20:>18.1f}   ({int(rss)} B)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
