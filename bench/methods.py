"""Every CPU-capable method on the embedded model: WikiText-2 perplexity at a fixed token budget,
weight size, effective bits per weight, the share of the blocks' matrix weights quantized,
quantization time, and the kernel that ran.

    .venv/bin/python bench/methods.py --corpus ../shared/data/wikitext2/wiki.test.raw

Runs `quantbench run` (each trial in its own worker process) into a fresh store, then prints one
JSON object (machine, versions, date, rows) and the Markdown table used in README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

from quantbench.app.cli import main as quantbench
from quantbench.results.query import wide
from quantbench.results.store import read_results
from quantbench.runner import environment

METHODS = [
    "baseline",
    "baseline:dtype=bfloat16",
    "rtn:bits=8,group_size=64",
    "rtn:bits=4,group_size=64",
    "bnb:bits=8",
    "bnb:bits=4,quant_type=nf4",
    "bnb:bits=4,quant_type=fp4",
    "torchao:bits=8",
    "torchao:bits=8,activations=int8",
    "quanto:weights=int8",
    "quanto:weights=int4",
    "hqq:nbits=4,group_size=64",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="e.g. ../shared/data/wikitext2/wiki.test.raw")
    parser.add_argument("--method", action="append", help=f"repeatable (default: {len(METHODS)} CPU methods)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--store", type=Path, help="results directory (default: a fresh temp dir)")
    args = parser.parse_args()

    store = args.store or Path(tempfile.mkdtemp(prefix="quantbench-methods-"))
    run = ["run", "--model", "embedded:smollm2-135m", "--corpus", args.corpus, "--store", str(store)]
    run += ["--seq-len", str(args.seq_len), "--max-tokens", str(args.max_tokens)]
    for method in args.method or METHODS:
        run += ["--method", method]
    quantbench(run)  # failed trials are stored too, and listed below

    table = wide(read_results(store).frame).sort_values("bits_per_weight", ascending=False)
    rows = [
        {
            "method": r.method_label,
            "status": r.status,
            "perplexity": round(r.perplexity, 3),
            "weight_mib": round(r.weight_bytes / 2**20, 1),
            "bits_per_weight": round(r.bits_per_weight, 2),
            "quantized_pct": round(100 * r.quantized_weight_fraction, 1),
            "quantize_s": round(r.quantize_seconds, 1),
            "kernel": r.kernel,
        }
        for r in table.itertuples()
        if r.status == "ok"
    ]
    report = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "versions": environment.versions(),
        "corpus": args.corpus,
        "seq_len": args.seq_len,
        "max_tokens": args.max_tokens,
        "failed": [r.method_label for r in table.itertuples() if r.status != "ok"],
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    print("| method | WikiText-2 ppl | weights MiB | bits/weight | quantized % | quantize s | kernel |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| `{r['method']}` | {r['perplexity']} | {r['weight_mib']} | {r['bits_per_weight']} | "
            f"{r['quantized_pct']} | {r['quantize_s']} | {r['kernel']} |"
        )


if __name__ == "__main__":
    main()
