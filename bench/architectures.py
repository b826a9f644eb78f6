"""README's architecture table: every CPU method on the tiny random models of the architecture matrix
(tests/architecture_cells.py, the cells tests/backends/test_architectures.py checks): the share of the
blocks' matrix weights each stored in low precision (quantized_weight_fraction, read from the quantized
model), or its one-line refusal.

    PYTHONPATH=$PWD .venv/bin/python bench/architectures.py

gguf refuses transformers directories, so it also runs on the tiny GGUFs the tests write (a Llama and
a Mixtral-style MoE). Prints one JSON object (machine, versions, date, cells) and the Markdown table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from architecture_cells import (  # the tests' matrix
    ARCHITECTURES,
    GGUF_QUANT_TYPE,
    GPTQMODEL_METHODS,
    METHODS,
    cell,
    gguf_cell,
    gptqmodel_cells,
    write_architectures,
    write_gguf_architectures,
)
from support import build_tokenizer

from quantbench.runner import environment


def main() -> None:
    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory(prefix="quantbench-architectures-") as tmp:
        root = Path(tmp)
        os.environ["QUANTBENCH_CACHE"] = str(root / "cache")  # the GGUFs' conversions stay private
        resolved = write_architectures(root, tokenizer)
        cells = {method: [cell(method, resolved[arch]) for arch in ARCHITECTURES] for method in METHODS}
        for method in GPTQMODEL_METHODS:
            cells[method] = gptqmodel_cells(method, [resolved[arch].path for arch in ARCHITECTURES])
        ggufs = write_gguf_architectures(root, tokenizer)
        gguf_files = {arch: gguf_cell(path) for arch, path in ggufs.items()}
        cells = {method: [_portable(c, tmp) for c in row] for method, row in cells.items()}
    report = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "versions": environment.versions(),
        "architectures": ARCHITECTURES,
        "cells": cells,
        "gguf_files": gguf_files,
    }
    print(json.dumps(report, indent=2))
    print(table(cells, gguf_files))


def table(cells: dict[str, list[dict]], gguf_files: dict[str, dict]) -> str:
    """One row per method, one column per architecture; refusals numbered, their lines below."""
    reasons: list[str] = []

    def text(c: dict) -> str:
        if not c["refusal"]:
            return f"{c['fraction']:.1%}"
        reason = re.sub(r"\b\w+(ForCausalLM|LMHeadModel)\b", "the model", c["refusal"])  # the column names it
        if reason not in reasons:
            reasons.append(reason)
        return f"refused ({reasons.index(reason) + 1})"

    lines = ["| method | " + " | ".join(ARCHITECTURES) + " |", "|---|" + "---:|" * len(ARCHITECTURES)]
    lines += [f"| `{method}` | " + " | ".join(text(c) for c in row) + " |" for method, row in cells.items()]
    files = ", ".join(f"{arch} {text(c)}" for arch, c in gguf_files.items())
    lines += ["", f"`gguf:quant_type={GGUF_QUANT_TYPE}` on the tiny GGUF files: {files}.", ""]
    lines += [f"({n}) {reason}" for n, reason in enumerate(reasons, 1)]
    return "\n".join(lines)


def _portable(c: dict, tmp: str) -> dict:
    """`c` with this run's temporary directory elided from its refusal (gguf names the directory)."""
    return {**c, "refusal": re.sub(re.escape(tmp) + r"/\S+?(?=:)", "…", c["refusal"])}


if __name__ == "__main__":
    main()
