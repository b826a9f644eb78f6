"""Time the results path a person waits on: query the store, pivot it wide, draw the Pareto chart.

Builds a synthetic store of `--trials` trial files × `--metrics` metric rows (default 2,000 ×
50 = 100,000 rows, about what a trial with perplexity, divergence and a latency profile
writes), then times, `--repeats` times, a filtered query (DuckDB), the wide pivot, and the
quality-vs-size figure with its Pareto front serialized to JSON. The first query reads every
trial file and fills the query cache; it is reported on its own, the median is of the others.

    .venv/bin/python bench/store.py

Prints one JSON object (machine, versions, date, numbers) and the line used in README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import pyarrow.parquet as pq

from quantbench.results.charts import quality_vs_size
from quantbench.results.query import Filters, query, wide
from quantbench.results.schema import Metric, TrialHeader, trial_table
from quantbench.runner import environment

METHODS = [("rtn", "bits"), ("gptq", "bits"), ("hqq", "nbits"), ("bnb", "bits")]


def fill_store(store: Path, trials: int, metrics: int) -> None:
    """Trial files as the runner writes them (without its fsync, which only slows the set-up)."""
    rng = random.Random(0)
    protocol = {"corpus": "builtin", "seq_len": 2048, "max_tokens": None, "batch_size": 1, "stride": None}
    for i in range(trials):
        method, bits_key = METHODS[i % len(METHODS)]
        bits = rng.choice([2, 3, 4, 8])
        header = TrialHeader(
            trial_key=f"{i:016x}", model_ref=f"model-{i % 3}", model_fingerprint=f"fp{i % 3}", method=method,
            method_label=f"{method}:{bits_key}={bits}", params={bits_key: bits}, device="cpu", hardware="cpu",
            hardware_fingerprint="hw", versions={"torch": "x"}, git_sha="", kernel="k",
        )  # fmt: skip
        rows = [
            Metric("quantize", "weight_bytes", 1e8 * bits / 16 * rng.uniform(0.9, 1.1), "bytes"),
            Metric("quantize", "bits_per_weight", bits + 0.5, "bits"),
            Metric("perplexity", "perplexity", 10 + 40 / bits**2 * rng.uniform(0.8, 1.2), "", protocol, "builtin", "h"),
        ]
        rows += [Metric("latency", f"extra_{j}", rng.random(), "s", {"batch": 1}) for j in range(metrics - len(rows))]
        pq.write_table(trial_table(header, rows), store / f"{header.trial_key}.parquet")


def time_once(store: Path) -> dict[str, float]:
    cpu = time.process_time()  # CPU time too: on a shared machine wall time also counts waiting for a core
    start = time.perf_counter()
    frame = query(store, Filters(status="ok")).frame
    read = time.perf_counter()
    table = wide(frame)
    pivot = time.perf_counter()
    quality_vs_size(frame).to_json()
    chart = time.perf_counter()
    assert len(frame) > 0 and len(table) > 0
    return {
        "query_s": read - start,
        "wide_s": pivot - read,
        "pareto_chart_s": chart - pivot,
        "total_s": chart - start,
        "total_cpu_s": time.process_time() - cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--metrics", type=int, default=50, help="metric rows per trial")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        os.environ["QUANTBENCH_CACHE"] = str(Path(tmp) / "cache")  # the query cache, thrown away after
        fill_store(store, args.trials, args.metrics)
        cold = time_once(store)  # reads every trial file and writes the query cache
        runs = [time_once(store) for _ in range(args.repeats)]
    median = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    report = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "versions": {p: version(p) for p in ("duckdb", "pandas", "pyarrow", "plotly")},
        "rows": args.trials * args.metrics,
        "trial_files": args.trials,
        "repeats": args.repeats,
        "first_query_s": round(cold["query_s"], 3),
        "median": median,
        "total_s_all_runs": [round(r["total_s"], 3) for r in runs],
    }
    print(json.dumps(report, indent=2))
    print(
        f"Query + wide pivot + Pareto chart over {report['rows']:,} metric rows in {args.trials:,} trial files: "
        f"{median['total_s']:.2f} s wall, {median['total_cpu_s']:.2f} s CPU (median of {args.repeats}; "
        f"query {median['query_s']:.2f} s, "
        f"pivot {median['wide_s']:.2f} s, chart {median['pareto_chart_s']:.2f} s; the first query, which reads "
        f"every file and fills the query cache, {report['first_query_s']:.1f} s) on {report['machine']}, "
        f"load average {report['load_average_1min']}, {report['date']}."
    )


if __name__ == "__main__":
    main()
