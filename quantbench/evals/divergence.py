"""How far a quantized model's next-token distributions drift from the unquantized model's.

What llama.cpp's `llama-perplexity --kl-divergence` reports, for any backend. For every scored
token of the perplexity protocol (same windows, see perplexity.py):
- KL(P_base ‖ Q) in nats, P the unquantized model's distribution, Q the quantized one's;
- top-1 agreement: both models give the same token the highest probability;
- Δp = q(correct token) − p(correct token).
Aggregates: mean, median, p90, p99 and max KL; agreement in %; mean and RMS Δp; the perplexity
ratio PPL(Q) / PPL(P). Mean KL and agreement carry their standard errors over tokens as
llama-perplexity reports them (evals/stats.py); per-window sums of KL and of agreeing tokens
(`window_kld_sum`, `window_top1_agree`, `window_tokens` series rows) let results/compare.py test
two methods against each other, paired on the same windows.

The baseline pass runs the unquantized model (fp32, on the quantized model's device, through the
quantized model's engine: its `reference`, so only quantization differs) once per
(model fingerprint, token ids, protocol, top_k, tail_samples) and caches, per scored token:
the top-k log-probabilities with their token ids, `tail_samples` tokens drawn from the rest of
the distribution with their log-probabilities, the log of the rest's mass and the
log-probability of the correct token, all fp32 with uint16 ids (6·(top_k + tail_samples) + 8
bytes per token: 776 with the defaults, where a full fp32 logit row of a 49k-token vocabulary
is 192 KiB). KL is the exact sum over the top-k plus the rest's share estimated from the
samples: p_rest · mean(log p_s − log q_s). The samples are systematic (evenly spaced over the
rest's cumulative mass, one random offset per token, fixed seed), so the estimate is unbiased and
its error averages out over tokens. Treating the rest as one bucket instead would be a lower
bound that misses ~20% of the KL of a 4-bit SmolLM2-135M: a small model spreads much of its
mass beyond the top 64. Measured (tests/evals/test_divergence.py, RTN 4-bit, 2048 tokens): mean
KL +0.09% and p99 +1.1% from the exact values. fp16 log-probs would save 2 bytes per entry but
move the mean by up to 0.3% when the KL is small (bf16 vs fp32: 0.0011 nats), so they stay fp32.

Cache files are written to a temp name and renamed (atomic); the file name is the key's hash and
the header holds the key itself, so a file from another model, corpus or protocol is never read
as this one. Both passes stream window by window; only per-token scalars are kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from quantbench import models
from quantbench.corpora import Corpus
from quantbench.engines.protocol import QuantizedModel
from quantbench.errors import QuantbenchError
from quantbench.evals import perplexity, progress
from quantbench.evals.perplexity import (
    PerplexityParams,
    ScoredWindow,
    chunk_start_token,
    protocol_windows,
    scored_windows,
    tokenize,
)
from quantbench.evals.stats import mean_stderr, proportion_stderr
from quantbench.files import atomic_path
from quantbench.models import ResolvedModel

FORMAT = "quantbench-divergence-baseline/2"
MAGIC = b"QBKLD001"
REFERENCE_DTYPE = "float32"


class DivergenceParams(PerplexityParams):
    """KL divergence from the unquantized model, token by token (same windows as perplexity)"""

    top_k: int = Field(64, ge=1, description="baseline log-probs kept exactly per token")
    tail_samples: int = Field(64, ge=1, description="tokens sampled from the rest of the baseline's distribution")


Params = DivergenceParams


@dataclass(frozen=True)
class DivergenceResult:
    kld: np.ndarray  # per scored token, nats
    kld_sq_sum: float
    top1_agree: int
    delta_p_sum: float
    delta_p_sq_sum: float
    nll_base_sum: float
    nll_quant_sum: float
    cache_hit: bool
    cache_bytes_per_token: float
    window_kld_sums: tuple[float, ...]  # per window, in window order: what paired comparisons need
    window_top1_agree: tuple[int, ...]
    window_tokens: tuple[int, ...]

    def metrics(self) -> list[tuple]:
        """(name, value, unit[, note, series]) rows for the results store."""
        n = len(self.kld)
        return [
            ("kld_mean", float(self.kld.mean()), "nats"),
            ("kld_mean_stderr", mean_stderr(sum(self.window_kld_sums), self.kld_sq_sum, n), "nats"),
            ("kld_median", float(np.median(self.kld)), "nats"),
            ("kld_p90", float(np.percentile(self.kld, 90)), "nats"),
            ("kld_p99", float(np.percentile(self.kld, 99)), "nats"),
            ("kld_max", float(self.kld.max()), "nats"),
            ("top1_agreement", 100.0 * self.top1_agree / n, "%"),
            ("top1_agreement_stderr", 100.0 * proportion_stderr(self.top1_agree, n), "%"),
            ("delta_p_mean", self.delta_p_sum / n, ""),
            ("delta_p_rms", (self.delta_p_sq_sum / n) ** 0.5, ""),
            ("ppl_ratio", float(np.exp((self.nll_quant_sum - self.nll_base_sum) / n)), ""),
            ("kld_tokens", n, "tokens"),
            ("baseline_cache_hit", float(self.cache_hit), ""),
            ("baseline_cache_bytes_per_token", self.cache_bytes_per_token, "bytes/token"),
            ("window_kld_sum", sum(self.window_kld_sums), "nats", "", self.window_kld_sums),
            ("window_top1_agree", self.top1_agree, "tokens", "", self.window_top1_agree),
            ("window_tokens", n, "tokens", "", self.window_tokens),
        ]


def record_dtype(top_k: int, tail_samples: int, vocab_size: int) -> np.dtype:
    """One cached baseline token: top-k ids and log-probs, tail sample ids and log-probs, log of the
    mass outside the top-k, log p(target)."""
    index = np.uint16 if vocab_size <= 2**16 else np.int32
    return np.dtype([("ids", index, (top_k,)), ("logp", np.float32, (top_k,)), ("tail_ids", index, (tail_samples,)),
                     ("tail_logp", np.float32, (tail_samples,)), ("log_rest", np.float32),
                     ("logp_target", np.float32)])  # fmt: skip


def baseline_records(logits: torch.Tensor, targets: torch.Tensor, dtype: np.dtype, seed: int) -> np.ndarray:
    """Compress the baseline's logits (n, V) into cache records; `seed` fixes the tail samples."""
    k, samples = dtype["ids"].shape[0], dtype["tail_ids"].shape[0]
    logp = torch.log_softmax(logits, dim=-1)
    top, ids = logp.topk(k, dim=-1)
    out = np.empty(len(targets), dtype)
    out["logp_target"] = logp.gather(1, targets[:, None])[:, 0].numpy()
    out["ids"], out["logp"] = ids.numpy(), top.numpy()
    tail_ids = _systematic_tail_samples(logp, ids, samples, seed)
    out["tail_ids"], out["tail_logp"] = tail_ids.numpy(), logp.gather(1, tail_ids).numpy()
    out["log_rest"] = _log_rest(logp, ids).numpy()
    return out


def _systematic_tail_samples(logp: torch.Tensor, ids: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """`samples` token ids per row drawn in proportion to p outside `ids`: evenly spaced points of
    the tail's cumulative mass with one uniform offset per row (systematic sampling)."""
    tail = logp.exp().scatter_(1, ids, 0.0)
    cdf = tail.cumsum(dim=-1)
    offset = torch.rand(len(logp), 1, generator=torch.Generator().manual_seed(seed))
    points = (torch.arange(samples) + offset) / samples * cdf[:, -1:]
    # searchsorted lands on the first token whose cumulative mass passes the point: never a top-k
    # token (zero mass adds nothing) unless rounding at the very end; clamp keeps the index valid.
    return torch.searchsorted(cdf, points, right=True).clamp_(max=logp.shape[1] - 1)


def _log_rest(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the mass outside `ids`, summed over the other tokens (not 1 − Σ top-k, which loses
    all precision when the top-k hold nearly all the mass). Overwrites `logp`."""
    return logp.scatter_(1, ids, float("-inf")).logsumexp(dim=-1)


@dataclass
class TokenStats:
    kld: torch.Tensor
    top1_agree: torch.Tensor  # bool
    delta_p: torch.Tensor
    nll_base: torch.Tensor
    nll_quant: torch.Tensor


def compare(base: np.ndarray, logits: torch.Tensor, targets: torch.Tensor) -> TokenStats:
    """Per-token statistics of a quantized model's logits (n, V) against cached baseline records."""
    logq = torch.log_softmax(logits, dim=-1)
    ids = torch.tensor(base["ids"].astype(np.int64))
    logp = torch.tensor(base["logp"])
    logp_target = torch.tensor(base["logp_target"])
    # topk, not argmax: the same tie-breaking as the baseline pass, so a model agrees with itself.
    agree = logq.topk(1, dim=-1).indices[:, 0] == ids[:, 0]
    logq_target = logq.gather(1, targets[:, None])[:, 0]
    logq_top = logq.gather(1, ids)
    tail_ratio = torch.tensor(base["tail_logp"]) - logq.gather(1, torch.tensor(base["tail_ids"].astype(np.int64)))
    p_rest = torch.tensor(base["log_rest"]).exp()
    rest_term = torch.where(p_rest > 0, p_rest * tail_ratio.mean(dim=-1), 0.0)  # k >= V leaves no rest
    kld = (logp.exp() * (logp - logq_top)).sum(dim=-1) + rest_term
    return TokenStats(kld, agree, logq_target.exp() - logp_target.exp(), -logp_target, -logq_target)


def cache_key(source: ResolvedModel, ids: torch.Tensor, params: DivergenceParams, device: str) -> dict:
    """Everything the cached baseline depends on. Token ids stand for corpus + tokenizer + max_tokens."""
    return {
        "format": FORMAT,
        "model_fingerprint": source.fingerprint,
        "tokens_sha256": hashlib.sha256(ids.numpy().astype("<i8").tobytes()).hexdigest(),
        "seq_len": params.seq_len,
        "stride": params.stride or params.seq_len,
        "top_k": params.top_k,
        "tail_samples": params.tail_samples,
        "reference_dtype": REFERENCE_DTYPE,
        "device": device,
        # Named only when not the default, so the baselines cached before the field existed still hit.
        **({"protocol": params.protocol} if params.protocol != "gptq" else {}),
    }


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return models.cache_dir() / "divergence" / f"{digest[:32]}.kld"


def read_cache(path: Path, key: dict, n_tokens: int) -> np.ndarray | None:
    """The cached records memory-mapped, or None when absent, damaged or built for another key."""
    try:
        with path.open("rb") as f:
            if f.read(8) != MAGIC:
                return None
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        if header["key"] != key:
            return None
        dtype = np.dtype([tuple(field) if len(field) == 2 else (field[0], field[1], tuple(field[2]))
                          for field in header["dtype"]])  # fmt: skip
        offset = 16 + header_len
        if path.stat().st_size != offset + n_tokens * dtype.itemsize:
            return None
        return np.memmap(path, dtype, mode="r", offset=offset, shape=(n_tokens,))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cache(path: Path, key: dict, dtype: np.dtype, records: Iterator[np.ndarray]) -> None:
    """Stream records to a temp file next to `path`, then rename it into place (atomic)."""
    header = json.dumps({"key": key, "dtype": dtype.descr}).encode()
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(MAGIC + len(header).to_bytes(8, "little") + header)
        for chunk in records:
            f.write(chunk.tobytes())


@dataclass
class Tally:
    """Per-window reductions of `compare`'s token statistics, in window order."""

    kld: list[np.ndarray] = field(default_factory=list)  # per token, nats
    agree: list[np.ndarray] = field(default_factory=list)  # per token, bool
    kld_sq_sum: float = 0.0
    delta_p_sum: float = 0.0
    delta_p_sq_sum: float = 0.0
    nll_base_sum: float = 0.0
    nll_quant_sum: float = 0.0

    def add(self, stats: TokenStats) -> None:
        self.kld.append(stats.kld.numpy())
        self.agree.append(stats.top1_agree.numpy())
        self.kld_sq_sum += stats.kld.double().square().sum().item()
        self.delta_p_sum += stats.delta_p.double().sum().item()
        self.delta_p_sq_sum += stats.delta_p.double().square().sum().item()
        self.nll_base_sum += stats.nll_base.double().sum().item()
        self.nll_quant_sum += stats.nll_quant.double().sum().item()

    def result(self, cache_hit: bool, cache_bytes_per_token: float) -> DivergenceResult:
        return DivergenceResult(
            kld=np.concatenate(self.kld),
            kld_sq_sum=self.kld_sq_sum,
            top1_agree=int(sum(a.sum() for a in self.agree)),
            delta_p_sum=self.delta_p_sum,
            delta_p_sq_sum=self.delta_p_sq_sum,
            nll_base_sum=self.nll_base_sum,
            nll_quant_sum=self.nll_quant_sum,
            cache_hit=cache_hit,
            cache_bytes_per_token=cache_bytes_per_token,
            window_kld_sums=tuple(k.astype(np.float64).sum().item() for k in self.kld),
            window_top1_agree=tuple(int(a.sum()) for a in self.agree),
            window_tokens=tuple(len(k) for k in self.kld),
        )


class WindowProgress:
    """Reports windows done out of `todo` (the baseline pass on a cache miss, then the quantized pass)."""

    def __init__(self, todo: int) -> None:
        self.done, self.todo = 0, todo

    def step(self) -> None:
        self.done += 1
        progress.report(self.done, self.todo)


@dataclass(frozen=True)
class Baseline:
    records: np.ndarray  # one record per scored token, in window order
    cache_hit: bool
    bytes_per_token: float


def baseline(
    key: dict,
    n_tokens: int,
    params: DivergenceParams,
    reference_windows: Callable[[], tuple[int, Iterator[ScoredWindow]]],
    on_window: Callable[[], None],
) -> Baseline:
    """The cached baseline records under `key`, or, on a miss, those of the windows that
    `reference_windows()` returns (with the reference's vocabulary size), written to the cache first.
    `on_window` is called after each window the miss computes."""
    path = cache_path(key)
    base = read_cache(path, key, n_tokens)
    cache_hit = base is not None
    if base is None:
        vocab, scored = reference_windows()
        dtype = record_dtype(min(params.top_k, vocab), params.tail_samples, vocab)

        def records() -> Iterator[np.ndarray]:
            for s in scored:
                yield baseline_records(s.logits, s.targets, dtype, seed=s.window.begin)
                on_window()
                del s  # before the next forward (scored_windows)

        write_cache(path, key, dtype, records())
        del scored  # the reference model it holds
        base = read_cache(path, key, n_tokens)
        assert base is not None, f"baseline cache {path} unreadable right after writing"
    return Baseline(base, cache_hit, path.stat().st_size / n_tokens)


def tally(base: np.ndarray, scored: Iterator[ScoredWindow], on_window: Callable[[], None]) -> Tally:
    """Compare each scored window with its slice of the baseline records (same window order)."""
    out, at = Tally(), 0
    for window in scored:
        n = len(window.targets)
        out.add(compare(base[at : at + n], window.logits, window.targets))
        at += n
        on_window()
        del window  # before the next forward (scored_windows)
    return out


def evaluate(
    model: QuantizedModel, corpus: Corpus, params: DivergenceParams, source: ResolvedModel
) -> DivergenceResult:
    """Compare `model` with the unquantized model behind `source`."""
    ids, _ = tokenize(model.tokenizer, corpus, params.max_tokens)
    start_token = chunk_start_token(model.tokenizer, params)
    n_tokens = sum(w.end - w.first_target for w in protocol_windows(len(ids), params))
    key = cache_key(source, ids, params, model.device)
    # Progress in windows: the baseline pass (on a cache miss) and the quantized pass.
    per_pass = perplexity.window_count(len(ids), params.seq_len, params.stride or params.seq_len)
    count = WindowProgress(per_pass * 2)

    def reference_windows() -> tuple[int, Iterator[ScoredWindow]]:
        reference = model.reference(source)
        return reference.vocab_size, scored_windows(reference.logits, ids, params, start_token)

    base = baseline(key, n_tokens, params, reference_windows, count.step)
    if base.cache_hit:
        count.todo = per_pass
    stats = tally(base.records, scored_windows(model.logits, ids, params, start_token), count.step)
    return stats.result(base.cache_hit, base.bytes_per_token)


def check_inputs(source: ResolvedModel, params: DivergenceParams, corpus: Corpus) -> None:
    """The reference must be an unquantized checkpoint, and the corpus must fill one window."""
    config = json.loads((source.path / "config.json").read_text())
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method", "unknown")
        raise QuantbenchError(
            f"divergence needs the unquantized model as reference, but {source.ref.ref} is already quantized "
            f"({method}); pass the original checkpoint with --model"
        )
    perplexity.check_inputs(source, params, corpus)


def run(model: QuantizedModel, params: DivergenceParams, corpus: Corpus, source: ResolvedModel) -> list[tuple]:
    """The eval-registry entry point: divergence of `model` from the unquantized `source`."""
    return evaluate(model, corpus, params, source).metrics()
