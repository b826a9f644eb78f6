"""What each llama.cpp type makes of a model: file MiB, weight MiB, bits per weight, the ggml type
each tensor really got, and where llama.cpp fell back to an older type.

Quantizes through the `gguf` method itself (the same path as a trial), so the figures are the ones
a trial stores (`file_bytes`, `weight_bytes`, `bits_per_weight`, `tensors:<type>`, `fallback_tensors`).
Sizes do not depend on the machine or its load.

    .venv/bin/python bench/gguf_files.py [--model embedded:smollm2-135m] [--type Q8_0 --type Q4_K_M ...]

Prints one JSON object (date, versions, rows) and the Markdown table used in README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from quantbench import models
from quantbench.backends.gguf import SOURCE, GgufBackend
from quantbench.engines.protocol import engine_facts
from quantbench.runner import environment
from quantbench.spec import ModelRef

TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", SOURCE)
MIB = 2**20


def measure(source: models.ResolvedModel, quant_type: str) -> dict:
    backend = GgufBackend()
    model = backend.quantize(source, GgufBackend.Params(quant_type=quant_type), "cpu")
    facts = {name: rest for name, *rest in engine_facts(model)}  # name -> [value, unit, note?]
    return {
        "quant_type": quant_type,
        "file_bytes": int(facts["file_bytes"][0]),
        "weight_bytes": model.weight_bytes,
        "bits_per_weight": model.bits_per_weight,
        "types": dict(model.facts.types.most_common()),
        "fallback": facts["fallback_tensors"][2] if "fallback_tensors" in facts else "",
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| quant_type | file MiB | weights MiB | bits/w | tensors by type |", "|---|---:|---:|---:|---|"]
    for row in rows:
        types = ", ".join(f"{name}×{n}" for name, n in row["types"].items())
        cells = [f"`{row['quant_type']}`", f"{row['file_bytes'] / MIB:.1f}", f"{row['weight_bytes'] / MIB:.1f}"]
        lines.append("| " + " | ".join([*cells, f"{row['bits_per_weight']:.2f}", types]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--type", action="append", help=f"repeatable (default: {', '.join(TYPES)})")
    args = parser.parse_args()
    environment.quiet_library_logs()
    source = models.resolve(ModelRef(args.model))
    rows = [measure(source, quant_type) for quant_type in args.type or TYPES]
    report = {
        "date": dt.date.today().isoformat(),
        "versions": environment.versions("llama-cpp-python"),
        "model": args.model,
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
