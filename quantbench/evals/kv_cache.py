"""What a quantized KV cache costs: divergence from the unquantized model when the scored tokens
read their context back from the cache, by depth.

Protocol (llama-perplexity's chunks, as divergence's `protocol=llamacpp`): non-overlapping windows
of `seq_len`, BOS first where the tokenizer adds one; the first half (seq_len/2 tokens) is fed in
one forward and fills the cache, then the second half follows `step` tokens per forward, each
forward attending to the K/V the cache holds, stored as `kv_cache` says (engines/kv_cache.py: with
transformers' quantized cache every earlier token is read back quantized, the forward's own tokens
in full precision; llama.cpp quantizes those too). The default step of 1 reads the cache as
generation does, one token per forward.

The reference is the unquantized model (divergence's `reference`, fp32) run through the same
protocol with a full-precision cache, cached once like divergence's baseline pass (its key adds
the step); so a trial's KLD holds its weights' error plus its cache's, and the same method's trial
with `kv_cache=none` separates the two.

Metrics: divergence's (see divergence.py), each prefixed `kv_`; plus `kv_kld_mean:depthI` and
`kv_top1_agreement:depthI` for I = 1…buckets, the scored half cut into `buckets` equal spans of
positions (the note names each span), so damage that grows with the context's length shows.
Bucket means weighted by their token counts (`kv_tokens:depthI`) give the overall mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from quantbench.corpora import Corpus
from quantbench.engines.kv_cache import LLAMA_CPP, KvCache, transformers_cache
from quantbench.engines.protocol import QuantizedModel, kv_logits_of
from quantbench.evals import divergence, perplexity
from quantbench.evals.divergence import DivergenceParams, Tally, WindowProgress
from quantbench.evals.perplexity import ScoredWindow, chunk_start_token, protocol_windows, scored_windows, tokenize
from quantbench.evals.stats import proportion_stderr
from quantbench.models import ResolvedModel


class KvCacheParams(DivergenceParams):
    """KL divergence from the unquantized model when the scored half of each window reads a quantized KV cache"""

    protocol: Literal["llamacpp"] = Field(
        "llamacpp", description="llama-perplexity's chunks: the first half fills the cache, the second half is scored"
    )
    kv_cache: str = Field(
        "quanto-int4",
        description="BACKEND-DTYPE: quanto-int4, quanto-int2, hqq-int4 (torch), llama.cpp-q8_0, llama.cpp-q4_0 "
        "(GGUF); none: full precision",
    )
    kv_group_size: int = Field(64, ge=1, description="cache elements per scale for transformers' backends")
    step: int = Field(1, ge=1, description="scored tokens per forward (1: as generation reads the cache)")
    buckets: int = Field(4, ge=1, description="spans of positions the scored half is reported in")

    @model_validator(mode="after")
    def _buckets_fit(self) -> KvCacheParams:
        scored = self.seq_len - self.seq_len // 2 - 1
        if self.buckets > scored:
            raise ValueError(f"{self.buckets} buckets exceed the {scored} tokens a {self.seq_len}-token chunk scores")
        return self

    def kv(self) -> KvCache | None:
        return KvCache.parse(self.kv_cache, self.kv_group_size)


Params = KvCacheParams


def cached_windows(
    model: QuantizedModel, ids: torch.Tensor, params: KvCacheParams, kv: KvCache | None, start_token: int | None
) -> Iterator[ScoredWindow]:
    """The scored windows of the protocol, their logits read through `model`'s KV cache."""
    context, kv_logits = params.seq_len // 2, kv_logits_of(model)

    def logits(windows: torch.Tensor) -> torch.Tensor:
        # scored_windows slices the logits of positions first_target - 1 = context … seq_len - 2 out of
        # a full window's; the context's own positions are never read, so they stay zero.
        scored = kv_logits(windows[:, :-1], context, params.step, kv)
        return torch.cat([scored.new_zeros(len(windows), context, scored.shape[-1]), scored, scored[:, -1:]], dim=1)

    return scored_windows(logits, ids, params, start_token)


def bucket_bounds(params: KvCacheParams) -> list[tuple[int, int]]:
    """[first, last] window positions of the targets in each bucket (of the scored half)."""
    first, n = params.seq_len // 2 + 1, params.seq_len - params.seq_len // 2 - 1
    edges = np.linspace(0, n, params.buckets + 1).round().astype(int)
    return [(first + int(a), first + int(b) - 1) for a, b in itertools.pairwise(edges)]


def metrics(stats: Tally, cache_hit: bool, bytes_per_token: float, params: KvCacheParams) -> list[tuple]:
    """Divergence's rows prefixed `kv_`, then the per-bucket rows."""
    rows = [(f"kv_{name}", *rest) for name, *rest in stats.result(cache_hit, bytes_per_token).metrics()]
    # every window scores the same positions, so a bucket is the same token offsets in each
    kld, agree = np.stack(stats.kld), np.stack(stats.agree)
    offset = params.seq_len // 2 + 1
    for i, (first, last) in enumerate(bucket_bounds(params), start=1):
        span = slice(first - offset, last - offset + 1)
        n = kld[:, span].size
        note = f"targets at positions {first}-{last} of each {params.seq_len}-token window"
        agreeing = int(agree[:, span].sum())
        rows += [
            (f"kv_kld_mean:depth{i}", float(kld[:, span].astype(np.float64).mean()), "nats", note),
            (f"kv_top1_agreement:depth{i}", 100.0 * agreeing / n, "%", note),
            (f"kv_top1_agreement_stderr:depth{i}", 100.0 * proportion_stderr(agreeing, n), "%", note),
            (f"kv_tokens:depth{i}", n, "tokens", note),
        ]
    return rows


def run(model: QuantizedModel, params: KvCacheParams, corpus: Corpus, source: ResolvedModel) -> list[tuple]:
    """The eval-registry entry point: divergence of `model` reading a `params.kv_cache` cache."""
    kv = params.kv()
    ids, _ = tokenize(model.tokenizer, corpus, params.max_tokens)
    start_token = chunk_start_token(model.tokenizer, params)
    n_tokens = sum(w.end - w.first_target for w in protocol_windows(len(ids), params))
    key = {**divergence.cache_key(source, ids, params, model.device), "kv_step": params.step}
    per_pass = perplexity.window_count(len(ids), params.seq_len, params.seq_len)
    count = WindowProgress(per_pass * 2)

    def reference_windows() -> tuple[int, Iterator[ScoredWindow]]:
        reference = model.reference(source)
        return reference.vocab_size, cached_windows(reference, ids, params, None, start_token)

    base = divergence.baseline(key, n_tokens, params, reference_windows, count.step)
    if base.cache_hit:
        count.todo = per_pass
    stats = divergence.tally(base.records, cached_windows(model, ids, params, kv, start_token), count.step)
    return metrics(stats, base.cache_hit, base.bytes_per_token, params)


def check_inputs(source: ResolvedModel, params: KvCacheParams, corpus: Corpus) -> None:
    """divergence's checks, and a transformers cache the installed transformers can build for the model."""
    kv = params.kv()
    if kv is not None and kv.backend != LLAMA_CPP:
        from transformers import AutoConfig

        transformers_cache(kv, AutoConfig.from_pretrained(source.path))
    divergence.check_inputs(source, params, corpus)
