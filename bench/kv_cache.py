"""What a quantized KV cache costs, by depth: the kv eval (evals/kv_cache.py) on unquantized weights.

Default: the embedded model, fp32 weights through transformers with quanto's and HQQ's int4/int2
caches, and the model's own GGUF file (as it is) through llama.cpp with q8_0/q4_0 caches; WikiText-2
test, chunks of 512 (the first 256 tokens fill the cache, the other 255 are scored one per forward),
8 chunks, KLD against the fp32 model with a full-precision cache (cached once, shared by all rows).

    nice .venv/bin/python bench/kv_cache.py --corpus ../shared/data/wikitext2/wiki.test.raw

On a busy machine, OMP_NUM_THREADS=1 keeps torch's threads from spinning at barriers while the other
is descheduled (one-token forwards are mostly barriers).

Prints one JSON object per cache (machine, versions, date, numbers) and the Markdown table used in README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import torch

from quantbench import models
from quantbench.backends.registry import get_backend
from quantbench.corpora import Corpus, load_corpus
from quantbench.evals import kv_cache
from quantbench.evals.kv_cache import KvCacheParams
from quantbench.runner import environment
from quantbench.spec import ModelRef

TORCH_CACHES = ("none", "quanto-int4", "quanto-int2", "hqq-int4", "hqq-int2")
LLAMA_CPP_CACHES = ("none", "llama.cpp-q8_0", "llama.cpp-q4_0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--corpus", required=True, help="e.g. ../shared/data/wikitext2/wiki.test.raw")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--buckets", type=int, default=4)
    parser.add_argument(
        "--rows", type=int, default=None, help="the corpus's first N rows only (saves tokenizing it whole)"
    )
    parser.add_argument("--torch-caches", nargs="*", default=TORCH_CACHES)
    parser.add_argument("--llama-cpp-caches", nargs="*", default=LLAMA_CPP_CACHES)
    args = parser.parse_args()

    environment.quiet_library_logs()
    source = models.resolve(ModelRef(args.model))
    corpus = load_corpus(args.corpus)
    if args.rows:
        corpus = Corpus(f"{corpus.name}[:{args.rows}]", corpus.rows[: args.rows])
    engines = []
    if args.torch_caches:
        baseline = get_backend("baseline")
        engines.append(
            ("baseline fp32", baseline.quantize(source, baseline.Params(dtype="float32"), "cpu"), args.torch_caches)
        )
    if args.llama_cpp_caches:
        gguf = get_backend("gguf")
        engines.append(
            ("gguf source", gguf.quantize(source, gguf.Params(quant_type="source"), "cpu"), args.llama_cpp_caches)
        )
    rows = []
    for weights, model, caches in engines:
        for cache in caches:
            params = KvCacheParams(
                corpus=args.corpus,
                seq_len=args.seq_len,
                max_tokens=args.seq_len * args.chunks,
                batch_size=args.chunks,
                kv_cache=cache,
                buckets=args.buckets,
            )
            start = time.perf_counter()
            m = {name: value for name, value, *_ in kv_cache.run(model, params, corpus, source)}
            seconds = time.perf_counter() - start
            row = {
                "date": dt.date.today().isoformat(),
                "machine": environment.hardware("cpu"),
                "torch_threads": torch.get_num_threads(),
                "versions": environment.versions(),
                "model": args.model,
                "weights": weights,
                "kernel": model.kernel,
                "corpus_sha256": corpus.content_hash,
                "params": params.model_dump(),
                "kld_mean": m["kv_kld_mean"],
                "kld_mean_stderr": m["kv_kld_mean_stderr"],
                "top1_agreement": m["kv_top1_agreement"],
                "kld_by_depth": [m[f"kv_kld_mean:depth{i}"] for i in range(1, args.buckets + 1)],
                "top1_by_depth": [m[f"kv_top1_agreement:depth{i}"] for i in range(1, args.buckets + 1)],
                "tokens": m["kv_kld_tokens"],
                "baseline_cache_hit": m["kv_baseline_cache_hit"],
                "seconds": round(seconds, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    spans = [f"{a}–{b}" for a, b in kv_cache.bucket_bounds(KvCacheParams(seq_len=args.seq_len, buckets=args.buckets))]
    print(f"\n| weights | KV cache | mean KLD ± se | top-1 % | {' | '.join(f'KLD @ {s}' for s in spans)} |")
    print("|---|---|---|---|" + "---|" * len(spans))
    for r in rows:
        depth = " | ".join(f"{v:.4f}" for v in r["kld_by_depth"])
        kld = f"{r['kld_mean']:.4f} ± {r['kld_mean_stderr']:.4f}"
        print(f"| {r['weights']} | {r['params']['kv_cache']} | {kld} | {r['top1_agreement']:.2f} | {depth} |")


if __name__ == "__main__":
    main()
