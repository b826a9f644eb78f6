"""The model every eval measures, whatever engine runs it.

In the spirit of gpt-fast (`prefill`, `decode_one_token`) and optimum-benchmark (`Backend.forward /
prefill / generate`): three calls and the facts the evals read, nothing an eval would have to
reach through. Token ids come in as int64 torch tensors (batch, seq); an engine that is not torch
converts at its own boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from quantbench.engines.coverage import Coverage
from quantbench.errors import QuantbenchError

if TYPE_CHECKING:
    from quantbench.models import ResolvedModel


@runtime_checkable
class QuantizedModel(Protocol):
    """A model ready for evaluation, plus the facts its backend knows about it.

    `weight_bytes` counts everything the weights occupy: packed codes, scales, zeros and the
    layers left unquantized. `bits_per_weight` is 8 × weight_bytes / number of weights.
    """

    tokenizer: object  # a transformers tokenizer: evals tokenize text with it
    device: str  # where the engine runs ("cpu", "cuda", "cuda:1"): picks the latency clock
    weight_bytes: int
    bits_per_weight: float
    kernel: str  # what computes the matmuls, as stored with the results
    context_length: int  # the most positions one sequence may hold
    vocab_size: int  # rows of the input embedding table: token ids below it are valid input
    # Weight bytes one decode step reads: all of them but the input embedding table, of which a
    # step reads one row per sequence (unless it is tied to the output layer, which is read whole).
    decode_weight_bytes: int
    # The dtype the engine computes logits in; `logits` upcasts them to fp32, which is exact, and
    # lm-eval's scores are taken in this dtype (what its HFLM does), so task numbers do not move.
    logits_dtype: torch.dtype
    # Which of the model's block matrices the method stored in low precision, measured from the
    # quantized model (None: the engine cannot tell, e.g. a model built by hand outside a backend).
    coverage: Coverage | None

    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Next-token logits (batch, seq, vocab), fp32 on the CPU, for token windows (batch, seq)
        scored independently, without cache."""
        ...

    def prefill(self, ids: torch.Tensor) -> None:
        """One forward over `ids` (batch, seq) that builds the KV cache and computes the last
        position's logits, as the first step of generation does: the time to first token. Returns
        when the engine's work is issued; the caller's clock synchronizes."""
        ...

    def generate(self, ids: torch.Tensor, n_new: int, on_token: Callable[[], None]) -> torch.Tensor:
        """Greedily decode exactly `n_new` tokens per row after `ids` (batch, seq), end-of-sequence
        ignored, and return them (batch, n_new). `on_token` is called once per generated token,
        when its scores exist, so a caller can stamp the time of each step."""
        ...

    def save(self, directory: Path) -> None:
        """Write a checkpoint of this model into `directory`. The checkpoint eval calls it only for a
        method whose backend `saves` with its parameters, that is, whose checkpoint reloads as this very model."""
        ...

    def reference(self, source: ResolvedModel) -> QuantizedModel:
        """The unquantized model behind `source` in fp32: the baseline that divergence compares
        against, run by this engine so only quantization differs, or by transformers where this
        engine's own fp32 run agrees with it (llama.cpp: mean KL ~1e-6), so every method shares one
        reference and its cached pass (the cache key does not name an engine)."""
        ...


def kv_logits_of(model: QuantizedModel) -> Callable:
    """The engine's optional `kv_logits(windows, context, step, kv)`: logits (batch, seq - context,
    vocab), fp32 on the CPU, of positions `context`… of `windows`, read through a KV cache stored as
    `kv` (engines/kv_cache.py, None: full precision) says; the first `context` tokens fill the cache,
    the rest follow `step` tokens per forward. An engine without a cache to quantize has none."""
    fn = getattr(model, "kv_logits", None)
    if fn is None:
        engine = type(model).__name__
        raise QuantbenchError(f"the engine running this model ({engine}) has no KV cache an eval can quantize")
    return fn


def engine_facts(model: QuantizedModel) -> list[tuple]:
    """The (name, value, unit[, note]) rows an engine records about the model it runs beyond the
    protocol's facts (llama.cpp: the file's tensor types, its build, threads), through its optional
    `trial_facts()`; none for engines without it."""
    facts = getattr(model, "trial_facts", None)
    return facts() if facts is not None else []
