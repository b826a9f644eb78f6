"""Latency profile: prefill time per prompt length and decode throughput per batch size.

Protocol, the same for every method:
- Prompts are random token ids from the tokenizer's vocabulary without special tokens, drawn
  with a fixed seed, so every method sees the same inputs and no prompt ends early.
- Prompt lengths are capped by the model's context length (the cap is stored as
  `prompt_length_cap`); metric names carry the length actually measured.
- `first_call_seconds` is the eval's very first forward pass, timed on its own and never part
  of any statistic: it holds the one-time costs (lazy initialisation, kernel autotuning or
  compilation, allocator growth). Then every series runs `warmup` untimed calls, then timed
  calls until it has both `repeats` samples and `min_seconds` of measured time.
- Prefill (time to first token) at batch 1: one forward over the prompt with the KV cache on,
  computing the logits of the last position only, as `generate` does.
- Decode at each batch size: the model's greedy `generate` of exactly `new_tokens` tokens over
  `decode_prompt_length`-token prompts, so every method decodes the same number of tokens (EOS
  is ignored until then; the count is checked). The decode loop is timed directly: the
  model calls back as each token's scores arrive, the callback stamps the clock, and
  decode time is the interval from token 1 to token N, i.e. N−1 decode steps without prefill.
  This needs one generate per sample instead of the difference of two (generate N − generate
  1), whose noise can exceed a short decode; on CUDA the stamps are events recorded on the
  stream, so they add no host synchronisation.

Statistics: `*_seconds` and `decode_ms_per_token` are medians; `prefill_seconds_p90` is the
90th percentile of the times (the slow tail); `decode_tokens_per_second_p90` is the
throughput that 90% of samples reached or beat (the 10th percentile of per-sample tokens/s,
also the slow tail); `*_spread` is (max − min) / median of the same samples. Throughput counts
every row: batch × (N − 1) / decode time. `decode_ms_per_token` is the time between two
tokens of one sequence (median decode time / (N − 1)), what a reader of one stream waits.
`decode_weight_bytes_per_second` divides the bytes one decode step must read (every weight,
the input embedding table excepted unless tied) by the median step time: decode is
memory-bound, so this explains most speed-ups from quantization.

Energy (trackers/energy.py): where the device has a readable counter (NVML on CUDA, RAPL on a
Linux CPU), its count over the timed decode calls gives `decode_joules_per_token` (whole GPU or
whole CPU packages, prefill of those calls included). Elsewhere no energy metric is stored (the
store holds floats only); the reason is logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from quantbench.corpora import Corpus
from quantbench.engines.protocol import QuantizedModel
from quantbench.errors import QuantbenchError
from quantbench.evals import progress
from quantbench.models import ResolvedModel
from quantbench.trackers import names
from quantbench.trackers.clock import Clock, clock_for, time_call
from quantbench.trackers.energy import EnergyMeter, energy_meter
from quantbench.trackers.memory import PeakMemory

log = logging.getLogger(__name__)
PROMPT_SEED = 0


class LatencyParams(BaseModel):
    """prefill time and decode tokens/s"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_lengths: tuple[PositiveInt, ...] = Field(
        (128, 512, 2048), min_length=1, description="prompt lengths (tokens) at which prefill is timed"
    )
    batch_sizes: tuple[PositiveInt, ...] = Field(
        (1, 4, 16), min_length=1, description="batch sizes at which decode tokens/s is timed"
    )
    new_tokens: int = Field(32, ge=2, description="tokens generated per row (one prefill + N-1 decode steps)")
    decode_prompt_length: PositiveInt = Field(128, description="prompt tokens per row before decoding")
    warmup: int = Field(1, ge=0, description="untimed calls before each series")
    repeats: PositiveInt = Field(3, description="minimum timed calls per series")
    min_seconds: float = Field(0.2, ge=0, description="minimum measured time per series")


Params = LatencyParams


def sample(measure: Callable[[], float], warmup: int, repeats: int, min_seconds: float) -> list[float]:
    """Run `measure` (which returns the seconds it measured) `warmup` times untimed, then until
    there are at least `repeats` samples and they add up to at least `min_seconds`."""
    for _ in range(warmup):
        measure()
    samples: list[float] = []
    while len(samples) < repeats or sum(samples) < min_seconds:
        samples.append(measure())
    return samples


def spread(values: Sequence[float]) -> float:
    return (max(values) - min(values)) / float(np.median(values))


def prompt_ids(model: QuantizedModel, batch: int, length: int, seed: int = PROMPT_SEED) -> torch.Tensor:
    """(batch, length) token ids drawn with a fixed seed from the vocabulary, special tokens excluded."""
    tokenizer = model.tokenizer
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(min(len(tokenizer), model.vocab_size)) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(allowed), (batch, length), generator=generator)
    return allowed[picks].to(model.device)


def capped_lengths(lengths: Sequence[int], cap: int) -> list[int]:
    """Requested prompt lengths limited to the model's context, each measured once."""
    return sorted({min(n, cap) for n in lengths})


def prefill_seconds(model: QuantizedModel, ids: torch.Tensor, clock: Clock) -> float:
    """The model's prefill over the prompt: the time to the first token's logits."""
    return time_call(lambda: model.prefill(ids), clock)


class TokenStamps:
    """The `on_token` callback of `generate`: stamps the clock once per generated token."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.marks: list = []

    def __call__(self) -> None:
        self.marks.append(self.clock.mark())


def decode(model: QuantizedModel, ids: torch.Tensor, new_tokens: int, clock: Clock) -> tuple[float, torch.Tensor]:
    """Greedy-generate exactly `new_tokens` per row; return the seconds of the N−1 decode steps
    (token 1's scores to token N's) and the generated ids (batch, new_tokens)."""
    stamps = TokenStamps(clock)
    generated = model.generate(ids, new_tokens, stamps)
    # Equal work for every method is the point of the protocol; an engine that stops early
    # must fail the trial rather than report a faster, shorter decode.
    if generated.shape[1] != new_tokens or len(stamps.marks) < new_tokens:
        raise RuntimeError(f"generate produced {generated.shape[1]} tokens per row, expected {new_tokens}")
    # On CUDA generate may run one speculative step past the end (deferred stop check); it is not counted.
    return clock.seconds(stamps.marks[0], stamps.marks[new_tokens - 1]), generated


def check_inputs(source: ResolvedModel, params: LatencyParams, corpus: Corpus | None) -> None:
    """Fail before quantizing when the model's context cannot hold one prompt token plus the new tokens."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.path, trust_remote_code=source.ref.trust_remote_code)
    cap = getattr(config, "max_position_embeddings", None)
    if cap is not None and params.new_tokens >= cap:
        raise QuantbenchError(
            f"new_tokens {params.new_tokens} does not fit the model's context of {cap} tokens; "
            "use a smaller --new-tokens"
        )


@torch.inference_mode()
def run(
    model: QuantizedModel, params: LatencyParams, corpus: Corpus | None, source: ResolvedModel
) -> list[tuple[str, float, str]]:
    """The eval-registry entry point: the latency profile of `model` (metric rows, see the module doc)."""
    clock = clock_for(model.device)
    cap = model.context_length
    lengths = capped_lengths(params.prompt_lengths, cap)
    rows: list[tuple[str, float, str]] = [("cpu_threads", torch.get_num_threads(), "threads")]
    rows.append(("prompt_length_cap", cap, "tokens"))
    energy = energy_meter(model.device)
    if not isinstance(energy, EnergyMeter):
        _log_once(f"energy not measured: {energy.reason}")
        energy = None
    todo = 1 + len(lengths) + len(params.batch_sizes)  # progress in series: first call, prefills, decodes
    with PeakMemory() as memory:
        rows.append(("first_call_seconds", prefill_seconds(model, prompt_ids(model, 1, lengths[0]), clock), "s"))
        progress.report(1, todo)
        for done, length in enumerate(lengths, start=2):
            rows += _prefill_rows(model, params, clock, length)
            progress.report(done, todo)
        prompt_length = min(params.decode_prompt_length, cap - params.new_tokens)
        for done, batch in enumerate(params.batch_sizes, start=2 + len(lengths)):
            rows += _decode_rows(model, params, clock, energy, batch, prompt_ids(model, batch, prompt_length))
            progress.report(done, todo)
    rows.append((names.INFERENCE_PEAK_RSS, memory.peak.rss_bytes, "bytes"))
    if clock.cuda:
        rows.append((names.INFERENCE_CUDA_MAX_ALLOCATED, memory.peak.cuda_allocated_bytes, "bytes"))
        rows.append((names.INFERENCE_CUDA_MAX_RESERVED, memory.peak.cuda_reserved_bytes, "bytes"))
    return rows


def _prefill_rows(model: QuantizedModel, params: LatencyParams, clock: Clock, length: int) -> list:
    ids = prompt_ids(model, 1, length)
    times = sample(lambda: prefill_seconds(model, ids, clock), params.warmup, params.repeats, params.min_seconds)
    return [
        (f"prefill_seconds@len={length}", float(np.median(times)), "s"),
        (f"prefill_seconds_p90@len={length}", float(np.percentile(times, 90)), "s"),
        (f"prefill_spread@len={length}", spread(times), ""),
    ]


def _decode_rows(
    model: QuantizedModel,
    params: LatencyParams,
    clock: Clock,
    energy: EnergyMeter | None,
    batch: int,
    ids: torch.Tensor,
) -> list:
    for _ in range(params.warmup):  # outside `sample`, so the energy count starts after them
        decode(model, ids, params.new_tokens, clock)
    joules_before = energy.joules() if energy else 0.0
    times = sample(lambda: decode(model, ids, params.new_tokens, clock)[0], 0, params.repeats, params.min_seconds)
    steps = params.new_tokens - 1
    median_seconds = float(np.median(times))
    throughput = [batch * steps / t for t in times]
    rows = [
        (f"decode_tokens_per_second@batch={batch}", float(np.median(throughput)), "tokens/s"),
        (f"decode_tokens_per_second_p90@batch={batch}", float(np.percentile(throughput, 10)), "tokens/s"),
        (f"decode_ms_per_token@batch={batch}", 1e3 * median_seconds / steps, "ms"),
        (f"decode_spread@batch={batch}", spread(throughput), ""),
        (
            f"decode_weight_bytes_per_second@batch={batch}",
            model.decode_weight_bytes * steps / median_seconds,
            "bytes/s",
        ),
    ]
    if energy:
        tokens = batch * params.new_tokens * len(times)
        rows.append((f"decode_joules_per_token@batch={batch}", (energy.joules() - joules_before) / tokens, "J/token"))
    return rows


@cache
def _log_once(message: str) -> None:
    log.info(message)
