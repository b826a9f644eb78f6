"""What trial isolation costs: the same small trial run in-process and in a worker process.

    .venv/bin/python bench/worker_overhead.py --repeats 5

The difference of the medians is the worker's start-up (a child forked by the interpreter's warm
server; before the fork server, a fresh interpreter importing torch and transformers) plus the
spec/outcome hand-over. The first worker trial, which starts the server, is timed apart
(`first_worker_s`) and not among the repeats. It also prints the memory rows the last worker trial
stored, so runs of two versions of the worker show whether a trial's peak RSS stays what it was.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from quantbench.results.store import read_results
from quantbench.runner import environment
from quantbench.runner.trial import execute, plan_trial, prepare_trial
from quantbench.runner.worker import run_in_worker
from quantbench.spec import EvalSpec, MethodSpec, ModelRef

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import build_tiny_llama, build_tokenizer  # the tests' tiny model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    environment.quiet_library_logs()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, store = Path(tmp) / "model", Path(tmp) / "store"
        tokenizer = build_tokenizer()
        build_tiny_llama(vocab_size=len(tokenizer)).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        evals = [EvalSpec("perplexity", {"seq_len": 32, "max_tokens": 64})]
        spec = plan_trial(ModelRef(str(model_dir)), MethodSpec("baseline"), evals)
        trial = prepare_trial(spec, store)
        execute(trial, store)  # warm caches (file hashes, imports) before timing either way
        start = time.perf_counter()
        assert run_in_worker(trial, store).status == "ok"  # starts the interpreter's fork server, once
        first_worker_s = time.perf_counter() - start
        timings = {"in_process": [], "worker": []}
        for _ in range(args.repeats):
            for name, run in [("in_process", execute), ("worker", run_in_worker)]:
                start = time.perf_counter()
                outcome = run(trial, store)
                assert outcome.status == "ok", outcome.error
                timings[name].append(time.perf_counter() - start)
        frame = read_results(store).frame
        rows = frame[(frame["trial_key"] == spec.key) & frame["metric"].str.contains("rss")]
        memory = {f"{r.eval}/{r.metric}": int(r.value) for r in rows.itertuples()}
    medians = {k: statistics.median(v) for k, v in timings.items()}
    report = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "versions": environment.versions(),
        "repeats": args.repeats,
        "in_process_s": {"median": round(medians["in_process"], 3), "min": round(min(timings["in_process"]), 3)},
        "worker_s": {"median": round(medians["worker"], 3), "min": round(min(timings["worker"]), 3)},
        "isolation_overhead_s": round(medians["worker"] - medians["in_process"], 3),
        "first_worker_s": round(first_worker_s, 3),  # with the fork server: its start-up, paid once per sweep
        "last_worker_trial_bytes": memory,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
