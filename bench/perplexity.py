"""Throughput, peak memory and forward-pass share of the perplexity evaluator.

Default: the embedded model on the whole WikiText-2 test split at seq_len 2048, fp32, CPU.

    .venv/bin/python bench/perplexity.py --corpus ../shared/data/wikitext2/wiki.test.raw

Prints one JSON object (machine, versions, date, numbers) and the Markdown row used in README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import torch

from quantbench import models
from quantbench.backends.registry import get_backend
from quantbench.corpora import load_corpus
from quantbench.evals.perplexity import PerplexityParams, evaluate
from quantbench.runner import environment
from quantbench.spec import ModelRef
from quantbench.trackers.memory import PeakMemory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--corpus", required=True, help="e.g. ../shared/data/wikitext2/wiki.test.raw")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    environment.quiet_library_logs()
    backend = get_backend("baseline")
    model = backend.quantize(models.resolve(ModelRef(args.model)), backend.Params(dtype=args.dtype), "cpu")
    corpus = load_corpus(args.corpus)
    params = PerplexityParams(corpus=args.corpus, seq_len=args.seq_len, max_tokens=args.max_tokens)
    with PeakMemory() as memory:
        result = evaluate(model.logits, model.tokenizer, corpus, params)
    report = {
        "date": dt.date.today().isoformat(),
        "machine": environment.hardware("cpu"),
        "torch_threads": torch.get_num_threads(),
        "versions": environment.versions(),
        "model": args.model,
        "dtype": args.dtype,
        "corpus": args.corpus,
        "corpus_sha256": corpus.content_hash,
        "seq_len": args.seq_len,
        "windows": result.windows,
        "tokens_scored": result.tokens_scored,
        "perplexity": round(result.perplexity, 4),
        "bits_per_byte": round(result.bits_per_byte, 4),
        "word_perplexity": round(result.word_perplexity, 3),
        "seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens_scored / result.seconds, 1),
        "forward_share": round(result.forward_seconds / result.seconds, 4),
        "peak_rss_mib": round(memory.peak.rss_bytes / 2**20),
        "weights_mib": round(model.weight_bytes / 2**20, 1),
    }
    print(json.dumps(report, indent=2))
    print(
        f"| {report['tokens_scored']} | {report['perplexity']} | {report['bits_per_byte']} | "
        f"{report['tokens_per_second']} | {report['peak_rss_mib']} | {report['forward_share']:.1%} |"
    )


if __name__ == "__main__":
    main()
