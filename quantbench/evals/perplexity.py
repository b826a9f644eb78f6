"""Perplexity, bits per byte and word perplexity on a corpus.

Protocol (the GPTQ paper's, which most quantization papers report): join the corpus rows with
"\\n\\n", tokenize once, cut the token stream into windows of `seq_len`, and average the
negative log-likelihood over every predicted token. With `stride < seq_len` the windows
overlap (sliding-window evaluation): each window then scores only the tokens the previous
window did not, each with up to `seq_len - 1` tokens of context. A tail shorter than one
window is dropped, as in the paper.

`protocol=llamacpp` is llama.cpp's instead, so figures compare with what `llama-perplexity -c
seq_len` prints (tools/perplexity/perplexity.cpp): the same non-overlapping chunks of `seq_len`,
but the chunk's first token is replaced by BOS where the tokenizer starts a text with one (llama.cpp's
`add_bos`; SmolLM2's does not), and only the second half is scored: the targets after position
seq_len/2, `seq_len - seq_len/2 - 1` tokens per chunk, each predicted with at least half a chunk
of context.

Tokenizer-independent figures, so models with different tokenizers compare:
- bits per byte = total NLL / ln 2 / UTF-8 bytes of the text the scored tokens cover;
- word perplexity = exp(total NLL / whitespace-separated words in that text).

Uncertainty, as llama-perplexity prints it (`PPL = 23.53 +/- 0.58`): the standard error of the
mean NLL over tokens, sqrt((E[nll²] − E[nll]²) / (n − 1)), carried to perplexity by the delta
method (d exp(x) = exp(x) dx, so stderr(PPL) = PPL · stderr(mean NLL)). It treats tokens as
independent, which neighbouring tokens are not, so it is a lower bound on the true spread; paired
comparisons between methods (results/compare.py) use windows as the independent units instead,
from the per-window NLL sums stored as `window_nll_sum` (series) with `window_tokens`.

Evaluation streams window by window: only running sums and one number per window are kept, so
memory does not grow with the corpus (beyond the token ids themselves).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantbench.corpora import CORPUS_FORMS, Corpus
from quantbench.engines.protocol import QuantizedModel
from quantbench.errors import QuantbenchError
from quantbench.evals import progress
from quantbench.evals.stats import mean_stderr
from quantbench.models import ResolvedModel, load_tokenizer


class PerplexityParams(BaseModel):
    """quality on a text corpus (lower is better)"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: str = Field(
        "builtin",
        description=f"{CORPUS_FORMS} (builtin: CPython's help texts, offline)",
    )
    seq_len: int = Field(2048, ge=2, description="tokens per scored window")
    stride: int | None = Field(None, ge=1, description="window step for sliding windows; unset = seq_len (no overlap)")
    max_tokens: int | None = Field(
        None, ge=2, description="score only the first N corpus tokens; unset = the whole corpus"
    )
    batch_size: int = Field(1, ge=1, description="windows per forward pass")
    # Dumped only when not the default: stored protocols (and so comparability with trials written
    # before the field existed) and baseline cache keys stay as they were.
    protocol: Literal["gptq", "llamacpp"] = Field(
        "gptq",
        exclude_if=lambda value: value == "gptq",
        description="gptq: every token after a window's first is scored (quantization papers); llamacpp: "
        "llama-perplexity's chunks, BOS first where the tokenizer adds one, second half scored",
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> PerplexityParams:
        if self.stride is not None and self.stride > self.seq_len:
            raise ValueError(f"stride ({self.stride}) must not exceed seq_len ({self.seq_len})")
        if self.protocol == "llamacpp" and self.stride is not None:
            raise ValueError("stride is for the gptq protocol: llama-perplexity's chunks do not overlap")
        if self.protocol == "llamacpp" and self.seq_len < 3:
            raise ValueError(f"the llamacpp protocol scores no token of a {self.seq_len}-token chunk; use seq_len >= 3")
        return self


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_mean: float  # nats per predicted token
    nll_mean_stderr: float  # standard error of nll_mean over tokens (see the module docstring)
    bits_per_byte: float
    word_perplexity: float
    tokens_scored: int
    windows: int
    seconds: float  # wall time of the whole evaluation, tokenization included
    forward_seconds: float  # time inside the model's forward passes
    window_nll_sums: tuple[float, ...]  # per window, in window order: what paired comparisons need
    window_tokens: tuple[int, ...]

    def metrics(self) -> list[tuple]:
        """(name, value, unit[, note, series]) rows for the results store."""
        return [
            ("perplexity", self.perplexity, ""),
            ("perplexity_stderr", self.perplexity * self.nll_mean_stderr, ""),
            ("nll_mean", self.nll_mean, "nats/token"),
            ("nll_mean_stderr", self.nll_mean_stderr, "nats/token"),
            ("bits_per_byte", self.bits_per_byte, "bits/byte"),
            ("word_perplexity", self.word_perplexity, ""),
            ("tokens_scored", self.tokens_scored, "tokens"),
            ("eval_seconds", self.seconds, "s"),
            ("eval_tokens_per_second", self.tokens_scored / self.seconds, "tokens/s"),
            ("window_nll_sum", sum(self.window_nll_sums), "nats", "", self.window_nll_sums),
            ("window_tokens", self.tokens_scored, "tokens", "", self.window_tokens),
        ]


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window (context included)
    end: int  # one past the last token
    first_target: int  # first token whose prediction is scored


def window_count(n_tokens: int, seq_len: int, stride: int) -> int:
    """How many windows `windows` yields (the progress total)."""
    return max(0, (n_tokens - seq_len) // stride + 1)


def windows(n_tokens: int, seq_len: int, stride: int) -> Iterator[Window]:
    """Windows over a stream of `n_tokens`; every token after the first is scored exactly once."""
    scored_until = 1  # token 0 has no context, so it is never a target
    for begin in range(0, n_tokens - seq_len + 1, stride):
        end = begin + seq_len
        yield Window(begin, end, max(scored_until, begin + 1))
        scored_until = end


def protocol_windows(n_tokens: int, params: PerplexityParams) -> Iterator[Window]:
    """The windows `params` score: `windows`, or under llamacpp the same chunks scored from the
    target after position seq_len/2 (llama-perplexity's `first = n_ctx/2`)."""
    for w in windows(n_tokens, params.seq_len, params.stride or params.seq_len):
        yield w if params.protocol == "gptq" else Window(w.begin, w.end, w.begin + params.seq_len // 2 + 1)


def chunk_start_token(tokenizer, params: PerplexityParams) -> int | None:
    """The token llama-perplexity writes over each chunk's first: BOS where the tokenizer puts one
    before a text (llama.cpp's `add_bos`), else None, as under the gptq protocol."""
    if params.protocol == "gptq" or tokenizer.bos_token_id is None:
        return None
    starts_with_bos = tokenizer("", verbose=False)["input_ids"][:1] == [tokenizer.bos_token_id]
    return tokenizer.bos_token_id if starts_with_bos else None


@dataclass(frozen=True)
class ScoredWindow:
    window: Window
    logits: torch.Tensor  # (n, V) fp32: the logits that predict `targets`
    targets: torch.Tensor  # (n,) token ids scored in this window


PREFIX_CHARS_PER_TOKEN = 8  # the first prefix tried per wanted token (English BPE averages about 4)
PREFIX_SETTLED_CHARS = 1000  # tokens ending this far before a prefix's end tokenize as in the whole text


def tokenize(tokenizer, corpus: Corpus, max_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N,) of the joined corpus and each token's character span (N, 2), cut to `max_tokens`.

    With `max_tokens`, only a prefix of the text is tokenized (WikiText-2's test set whole took
    about 1 s, an eighth of a 4096-token perplexity eval), doubled until it holds `max_tokens`
    tokens ending PREFIX_SETTLED_CHARS before its end: a tokenizer splits text into words before
    merging, so a cut changes only the tokens of the words around it, and those are dropped."""
    text = corpus.text
    cut = len(text) if max_tokens is None else max(1, max_tokens * PREFIX_CHARS_PER_TOKEN)
    while cut < len(text):
        ids, offsets = _encode(tokenizer, text[:cut])
        if int((offsets[:, 1] <= cut - PREFIX_SETTLED_CHARS).sum()) >= max_tokens:
            return ids[:max_tokens], offsets[:max_tokens]
        cut *= 2
    ids, offsets = _encode(tokenizer, text)
    return ids[:max_tokens], offsets[:max_tokens]


def _encode(tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    encoding = tokenizer(text, return_offsets_mapping=True, verbose=False)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    offsets = torch.tensor(encoding["offset_mapping"], dtype=torch.long).reshape(-1, 2)
    return ids, offsets  # the encoding's Python lists of ints cost ~10x these tensors and are dropped here


def scored_windows(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    ids: torch.Tensor,
    params: PerplexityParams,
    start_token: int | None = None,
) -> Iterator[ScoredWindow]:
    """Run `logits_fn` over the windows of `ids`, `batch_size` at a time, and yield each window's
    scored part; one batch of logits is alive at a time, so memory does not grow with the corpus.
    Each yielded window's logits are a view into that batch, not read again: the consumer may
    overwrite them, and drops the window before asking for the next, or the batch stays beside
    the next forward's logits.
    `start_token` (`chunk_start_token`) replaces each window's first input token."""
    for batch in _chunks(protocol_windows(len(ids), params), params.batch_size):
        inputs = torch.stack([ids[w.begin : w.end] for w in batch])
        if start_token is not None:
            inputs[:, 0] = start_token
        logits = logits_fn(inputs)
        for row, w in zip(logits, batch, strict=True):
            # logits at position p predict token p + 1
            yield ScoredWindow(w, row[w.first_target - w.begin - 1 : -1].float(), ids[w.first_target : w.end])
        del logits, row


@torch.inference_mode()  # the engines' logits are inference tensors, overwritten in place here
def evaluate(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    tokenizer,
    corpus: Corpus,
    params: PerplexityParams,
) -> PerplexityResult:
    """Score `corpus` with `logits_fn` (token ids (B, T) -> logits (B, T, V))."""
    start = time.perf_counter()
    text = corpus.text
    ids, offsets = tokenize(tokenizer, corpus, params.max_tokens)
    _check_length(len(ids), corpus, params)

    forward = _TimedCalls(logits_fn)
    todo = window_count(len(ids), params.seq_len, params.stride or params.seq_len)
    nll_sum, nll_sq_sum, tokens, n_bytes, words, n_windows = 0.0, 0.0, 0, 0, 0, 0
    window_sums, window_tokens = [], []
    for scored in scored_windows(forward, ids, params, chunk_start_token(tokenizer, params)):
        w = scored.window
        # nll_loss of log_softmax is what cross_entropy computes, so the sum is the one it returned.
        # In place, in logits nothing reads again: a fresh (seq_len × vocab) fp32 tensor per window
        # would page-fault ~100 MB on every window at 512 tokens, and the peak stays the batch's
        # logits (planner/estimate.py).
        logp = torch.log_softmax(scored.logits, dim=-1, out=scored.logits)
        window_sum = F.nll_loss(logp, scored.targets, reduction="sum").item()
        nll_sq_sum += logp.gather(1, scored.targets[:, None]).double().square().sum().item()
        nll_sum += window_sum
        tokens += len(scored.targets)
        window_sums.append(window_sum)
        window_tokens.append(len(scored.targets))
        covered = text[offsets[w.first_target, 0] : offsets[w.end - 1, 1]]
        n_bytes += len(covered.encode())
        words += len(covered.split())
        n_windows += 1
        progress.report(n_windows, todo)
        del scored, logp  # before the next forward (scored_windows)

    nll_mean = nll_sum / tokens
    return PerplexityResult(
        perplexity=math.exp(nll_mean),
        nll_mean=nll_mean,
        nll_mean_stderr=mean_stderr(nll_sum, nll_sq_sum, tokens),
        bits_per_byte=nll_sum / math.log(2) / max(n_bytes, 1),
        word_perplexity=math.exp(nll_sum / max(words, 1)),
        tokens_scored=tokens,
        windows=n_windows,
        seconds=time.perf_counter() - start,
        forward_seconds=forward.seconds,
        window_nll_sums=tuple(window_sums),
        window_tokens=tuple(window_tokens),
    )


class _TimedCalls:
    """Wraps a function and adds up the wall time spent inside it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        try:
            return self.fn(inputs)
        finally:
            self.seconds += time.perf_counter() - t0


def _chunks(items: Iterator[Window], size: int) -> Iterator[list[Window]]:
    chunk: list[Window] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


Params = PerplexityParams


def check_inputs(model: ResolvedModel, params: PerplexityParams, corpus: Corpus) -> None:
    """Fail before quantizing when the corpus cannot fill one window (costs one tokenization)."""
    n_tokens = len(load_tokenizer(model)(corpus.text, verbose=False)["input_ids"])
    _check_length(min(n_tokens, params.max_tokens or n_tokens), corpus, params)


def _check_length(n_tokens: int, corpus: Corpus, params: PerplexityParams) -> None:
    if n_tokens < params.seq_len:
        raise QuantbenchError(
            f"corpus {corpus.name!r} has {n_tokens} tokens, fewer than one window of seq_len {params.seq_len}; "
            "use a smaller --seq-len or a larger corpus"
        )


def run(model: QuantizedModel, params: PerplexityParams, corpus: Corpus, source: ResolvedModel) -> list[tuple]:
    """The eval-registry entry point: perplexity of `model` on `corpus`."""
    return evaluate(model.logits, model.tokenizer, corpus, params).metrics()
