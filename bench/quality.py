"""Quality of each method on the embedded model: perplexity, KL divergence, top-1 agreement, tasks.

Runs `quantbench run --eval perplexity,divergence,tasks` for every `--method` into a results
store (the same code path as a user's run), then prints one JSON object (machine, versions,
date, numbers) and the Markdown table used in README.

    .venv/bin/python bench/quality.py --method baseline --method baseline:dtype=bfloat16 \\
        --method rtn:bits=4,group_size=64 --method bnb:bits=4 --data ../shared/data

The baseline divergence pass is cached (quantbench cache dir), so only the first method pays it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

import pandas as pd

from quantbench.app.cli import main as quantbench
from quantbench.backends.registry import get_backend, method_label
from quantbench.results.query import wide
from quantbench.results.store import read_results
from quantbench.runner import environment
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef

TASK_FILES = {  # task -> its file under the shared data folder
    "lambada_openai": "lambada_openai/lambada_test.jsonl",
    "piqa": "piqa/valid.jsonl",
    "arc_easy": "arc/ARC-Easy-Test.jsonl",
    "winogrande": "winogrande/dev.jsonl",
    "hellaswag": "hellaswag/hellaswag_val_full.txt.bz2",
}
COLUMNS = ["perplexity", "kld_mean", "kld_p99", "top1_agreement", "ppl_ratio", "weight_bytes", "baseline_cache_hit"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--method", action="append", help="repeatable (default: baseline, baseline:dtype=bfloat16)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--tasks", default="lambada_openai,piqa", help=f"two or more of {', '.join(TASK_FILES)}")
    parser.add_argument("--limit", type=int, default=200, help="documents per task")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=16384, help="WikiText-2 test tokens for ppl and KLD")
    parser.add_argument("--store", type=Path, help="results directory (default: a fresh temp dir)")
    args = parser.parse_args()

    store = args.store or Path(tempfile.mkdtemp(prefix="quantbench-quality-"))
    methods = args.method or ["baseline", "baseline:dtype=bfloat16"]
    tasks = [t.strip() for t in args.tasks.split(",")]
    run = ["run", "--model", args.model, "--eval", "perplexity,divergence,tasks", "--store", str(store)]
    run += ["--corpus", str(args.data / "wikitext2" / "wiki.test.raw"), "--seq-len", str(args.seq_len)]
    run += ["--max-tokens", str(args.max_tokens), "--tasks", ",".join(tasks), "--limit", str(args.limit)]
    for task in tasks:
        run += ["--task-data", f"{task}={args.data / TASK_FILES[task]}"]
    for method in methods:
        run += ["--method", method]
    quantbench(run)  # failed trials are stored too, and shown below

    table = wide(read_results(store).frame)
    table = table[table["model_ref"] == args.model]
    rows = []
    for method in methods:
        spec = plan_trial(ModelRef(args.model), MethodSpec.parse(method), [EvalSpec("perplexity")]).method
        match = table[ran(table, spec)]
        if match.empty:
            rows.append({"method": method_label(spec), "status": "missing"})
            continue
        trial = match.iloc[0]
        row = {"method": method_label(spec), "status": trial["status"]}
        for metric in COLUMNS + [f"task:{t}:{m}" for t in tasks for m in ("acc", "acc_stderr")]:
            row[metric] = None if metric not in trial or trial[metric] != trial[metric] else float(trial[metric])
        rows.append(row)
    report = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "versions": environment.versions("lm_eval"),
        "model": args.model,
        "protocol": {"seq_len": args.seq_len, "max_tokens": args.max_tokens, "limit": args.limit, "top_k": 64},
        "store": str(store),
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    print(markdown(rows, tasks))


def ran(table: pd.DataFrame, method: MethodSpec) -> pd.Series:
    """Which trials ran `method`: same name and the same full parameters (labels changed over time)."""
    full = get_backend(method.name).Params.model_validate(dict(method.params)).model_dump(mode="json")
    return (table["method"] == method.name) & table["params_json"].map(lambda text: json.loads(text) == full)


def markdown(rows: list[dict], tasks: list[str]) -> str:
    head = ["method", "ppl", "mean KLD", "p99 KLD", "top-1 %", "PPL ratio", "weights MiB"]
    head += [f"{t} acc" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['method']} | {row['status']} |" + " |" * (len(head) - 2))
            continue
        cells = [row["method"], f"{row['perplexity']:.3f}", f"{row['kld_mean']:.5f}", f"{row['kld_p99']:.4f}"]
        cells += [f"{row['top1_agreement']:.2f}", f"{row['ppl_ratio']:.4f}", f"{row['weight_bytes'] / 2**20:.1f}"]
        cells += [f"{row[f'task:{t}:acc']:.3f} ± {row[f'task:{t}:acc_stderr']:.3f}" for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
