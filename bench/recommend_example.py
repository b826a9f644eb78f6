"""README's worked example of `quantbench recommend`: its output over the store that
bench/recommend-example.yaml measured, and its chart as a PNG (kaleido drives the local chromium).

    quantbench sweep bench/recommend-example.yaml --store docs/results/recommend-example
    .venv/bin/python bench/recommend_example.py

Prints the machine, versions and date as JSON, then the command and exactly what it prints; writes
docs/recommend-example.png.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from pathlib import Path

from quantbench.app.cli import build_parser, main
from quantbench.app.recommend_cli import request_from
from quantbench.results.recommend import recommend
from quantbench.results.recommend_view import budget_chart
from quantbench.results.store import read_results
from quantbench.runner import environment

ROOT = Path(__file__).resolve().parents[1]
STORE = "docs/results/recommend-example"
# A CPU deployment with 1.1 GiB of RAM for the model at 2048 tokens of context: which setting keeps the
# mean KLD from the float32 model under 0.05 nats and perplexity within 2% of it?
ARGV = ["recommend", "--model", "embedded:smollm2-135m", "--store", STORE, "--memory", "1.1", "--context", "2048",
        "--max-kld", "0.05", "--max-ppl-increase", "2",
        "--candidate", "bnb:bits=4,quant_type=nf4", "--candidate", "torchao:bits=8"]  # fmt: skip
PNG = ROOT / "docs" / "recommend-example.png"


def run() -> None:
    facts = {
        "machine": environment.hardware("cpu"),
        "versions": environment.versions(),
        "date": dt.date.today().isoformat(),
    }
    print(json.dumps(facts, indent=1))
    output = io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(output):
        main(ARGV)
        args = build_parser().parse_args(ARGV)
        frame = read_results(Path(STORE)).frame
        figure = budget_chart(recommend(frame, request_from(args)), frame)
    print("$ quantbench " + " ".join(f'"{a}"' if " " in a else a for a in ARGV))
    print(output.getvalue())
    figure.write_image(PNG, format="png", width=1000, height=600)
    print(f"wrote {PNG.relative_to(ROOT)}")


if __name__ == "__main__":
    run()
