"""Where the evaluators spend their time: perplexity's share inside the model's forward pass;
task log-likelihood requests per second beside lm-eval's own HFLM on the same requests and batch
size; and divergence's reference pass, paid by the first trial of a sweep and read from the cache
by the next one on the same tokens.

    .venv/bin/python bench/eval_throughput.py --corpus ../shared/data/wikitext2/wiki.test.raw \
        --piqa ../shared/data/piqa/valid.jsonl

Task requests are piqa's (`Question: <goal>\\nAnswer:` + each solution, the stock prompt); both
scorers get the same embedded model module in fp32 and return the same floats (checked), and
their runs alternate, `--repeats` each, the median reported. Divergence runs in a fresh cache
directory: trial 1 (`baseline:compute_dtype=bfloat16`) misses it, trial 2 (`rtn:bits=8`) hits.

Prints one JSON object (machine, versions, date, numbers) and the lines used in README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from quantbench import models
from quantbench.backends.registry import get_backend
from quantbench.corpora import load_corpus
from quantbench.evals import divergence, tasks
from quantbench.evals.perplexity import PerplexityParams, evaluate
from quantbench.runner import environment
from quantbench.spec import ModelRef


def perplexity_share(model, corpus, args: argparse.Namespace) -> dict:
    params = PerplexityParams(corpus=args.corpus, seq_len=args.seq_len, max_tokens=args.ppl_tokens)
    result = evaluate(model.logits, model.tokenizer, corpus, params)
    return {
        "tokens_scored": result.tokens_scored,
        "seq_len": args.seq_len,
        "seconds": round(result.seconds, 2),
        "forward_seconds": round(result.forward_seconds, 2),
        "forward_share": round(result.forward_seconds / result.seconds, 4),
    }


def piqa_requests(path: str, documents: int) -> list:
    from lm_eval.api.instance import Instance

    rows = tasks.local_rows("piqa", path)[:documents]
    pairs = [(f"Question: {row['goal']}\nAnswer:", f" {row[sol]}") for row in rows for sol in ("sol1", "sol2")]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def task_rates(model, args: argparse.Namespace) -> dict:
    from lm_eval.models.huggingface import HFLM

    from quantbench.evals.protocol_lm import ProtocolLM

    requests = piqa_requests(args.piqa, args.documents)
    scorers = {
        "quantbench": ProtocolLM(model, args.batch_size),
        "lm_eval_hflm": HFLM(pretrained=model.module, tokenizer=model.tokenizer, batch_size=args.batch_size),
        "quantbench_batch_1": ProtocolLM(model, 1),
    }
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    answers = {}
    for _ in range(args.repeats):
        for name, scorer in scorers.items():
            start = time.perf_counter()
            answers[name] = scorer.loglikelihood(requests)
            seconds[name].append(time.perf_counter() - start)
    if answers["quantbench"] != answers["lm_eval_hflm"]:
        raise SystemExit("quantbench and HFLM scored the requests differently: the comparison is void")
    rates = {name: round(len(requests) / statistics.median(s), 1) for name, s in seconds.items()}
    return {
        "requests": len(requests),
        "batch_size": args.batch_size,
        "requests_per_s": rates,
        "ratio_to_hflm": round(rates["quantbench"] / rates["lm_eval_hflm"], 3),
        "seconds_each_run": {name: [round(x, 2) for x in s] for name, s in seconds.items()},
    }


def divergence_reuse(source, corpus, args: argparse.Namespace) -> list[dict]:
    params = divergence.DivergenceParams(corpus=args.corpus, seq_len=args.seq_len, max_tokens=args.kld_tokens)
    trials = []
    for method, settings in (("baseline", {"compute_dtype": "bfloat16"}), ("rtn", {"bits": 8})):
        backend = get_backend(method)
        model = backend.quantize(source, backend.Params(**settings), "cpu")
        start = time.perf_counter()
        result = divergence.evaluate(model, corpus, params, source)
        trials.append(
            {
                "trial": f"{method}:{','.join(f'{k}={v}' for k, v in settings.items())}",
                "reference_pass_run": not result.cache_hit,
                "seconds": round(time.perf_counter() - start, 2),
                "kld_mean": round(float(result.kld.mean()), 6),
            }
        )
        del model
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--corpus", required=True, help="e.g. ../shared/data/wikitext2/wiki.test.raw")
    parser.add_argument("--piqa", required=True, help="e.g. ../shared/data/piqa/valid.jsonl")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--ppl-tokens", type=int, default=8192, help="tokens for the perplexity share")
    parser.add_argument("--kld-tokens", type=int, default=4096, help="tokens for the divergence trials")
    parser.add_argument("--documents", type=int, default=100, help="piqa documents (two requests each)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["perplexity", "tasks", "divergence"])
    args = parser.parse_args()

    environment.quiet_library_logs()
    source = models.resolve(ModelRef(args.model))
    corpus = load_corpus(args.corpus)
    backend = get_backend("baseline")
    model = backend.quantize(source, backend.Params(), "cpu")
    report: dict = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "torch_threads": torch.get_num_threads(),
        "versions": {k: v for k, v in environment.versions().items() if k in ("torch", "transformers", "lm_eval")},
        "model": args.model,
    }
    if "perplexity" not in args.skip:
        report["perplexity"] = perplexity_share(model, corpus, args)
    if "tasks" not in args.skip:
        report["tasks"] = task_rates(model, args)
    del model
    if "divergence" not in args.skip:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["QUANTBENCH_CACHE"] = str(Path(cache))  # the reference pass is not cached yet
            report["divergence"] = divergence_reuse(source, corpus, args)
    report["load_average_1min"] = round(os.getloadavg()[0], 1)
    print(json.dumps(report, indent=2))
    if "perplexity" in report:
        p = report["perplexity"]
        print(f"Perplexity: {p['forward_share']:.1%} of {p['seconds']} s in the forward ({p['tokens_scored']} tokens).")
    if "tasks" in report:
        t = report["tasks"]
        r = t["requests_per_s"]
        print(
            f"Tasks (piqa, {t['requests']} requests, batch {t['batch_size']}): quantbench {r['quantbench']} req/s, "
            f"lm-eval HFLM {r['lm_eval_hflm']} req/s (ratio {t['ratio_to_hflm']}); batch 1: {r['quantbench_batch_1']}."
        )
    for trial in report.get("divergence", []):
        ran = "runs the reference pass" if trial["reference_pass_run"] else "reads it from the cache"
        print(f"Divergence, {trial['trial']}: {ran}, {trial['seconds']} s.")


if __name__ == "__main__":
    main()
