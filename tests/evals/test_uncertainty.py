"""Standard errors and per-window sums of perplexity and divergence, checked against a direct
computation from the per-token values of a tiny random Llama (built from a config in conftest),
and on the real embedded model's outputs in the measurement the noise floor comes from."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import noisy_model as _model

from quantbench import models
from quantbench.evals import divergence, perplexity
from quantbench.evals.divergence import DivergenceParams
from quantbench.evals.perplexity import PerplexityParams, scored_windows, tokenize
from quantbench.evals.stats import mean_stderr, proportion_stderr
from quantbench.spec import ModelRef

PARAMS = PerplexityParams(seq_len=64, max_tokens=400, batch_size=2)


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path, monkeypatch):
    """Baseline caches go to a fresh dir; the real model keeps the shared cache (its dequantized GGUF)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))


def _rows(rows) -> dict[str, tuple]:
    return {row[0]: row[1:] for row in rows}


def test_perplexity_stderr_and_window_sums_match_the_per_token_nll(source, corpus, tiny_tokenizer):
    model = _model(source)
    rows = _rows(perplexity.run(model, PARAMS, corpus, source))
    ids, _ = tokenize(tiny_tokenizer, corpus, PARAMS.max_tokens)
    per_window = [F.cross_entropy(s.logits, s.targets, reduction="none").double()
                  for s in scored_windows(model.logits, ids, PARAMS)]  # fmt: skip
    nll = torch.cat(per_window).numpy()
    ppl = math.exp(nll.mean())
    # the standard error of a mean, written the textbook way (sample std / sqrt n)
    expected = ppl * nll.std(ddof=1) / math.sqrt(len(nll))
    assert rows["perplexity"][0] == pytest.approx(ppl, rel=1e-5)
    assert rows["perplexity_stderr"][0] == pytest.approx(expected, rel=1e-4)
    assert rows["nll_mean_stderr"][0] == pytest.approx(nll.std(ddof=1) / math.sqrt(len(nll)), rel=1e-4)
    value, unit, note, series = rows["window_nll_sum"]
    assert series == pytest.approx([w.sum().item() for w in per_window], rel=1e-5)
    assert value == pytest.approx(nll.sum(), rel=1e-5) and unit == "nats" and note == ""
    assert rows["window_tokens"][3] == (63,) * 6 and rows["window_tokens"][0] == len(nll) == 6 * 63


def test_the_stored_perplexity_is_exactly_the_cross_entropy_sum(source, corpus, tiny_tokenizer):
    """The stderr pass must not move the headline number: the same sum as F.cross_entropy's."""
    model = _model(source, noise=0.2)
    result = perplexity.evaluate(model.logits, tiny_tokenizer, corpus, PARAMS)
    ids, _ = tokenize(tiny_tokenizer, corpus, PARAMS.max_tokens)
    total = sum(F.cross_entropy(s.logits, s.targets, reduction="sum").item()
                for s in scored_windows(model.logits, ids, PARAMS))  # fmt: skip
    assert result.perplexity == math.exp(total / result.tokens_scored)


def test_kld_and_top1_stderr_match_the_per_token_values(source, corpus, tiny_tokenizer):
    base, quant = _model(source), _model(source, noise=0.5)
    params = DivergenceParams(**PARAMS.model_dump(), top_k=10_000)  # > vocabulary: the exact KL
    rows = _rows(divergence.run(quant, params, corpus, source))
    ids, _ = tokenize(tiny_tokenizer, corpus, params.max_tokens)
    kl, agree = [], []
    for p, q in zip(scored_windows(base.logits, ids, params), scored_windows(quant.logits, ids, params), strict=True):
        logp, logq = p.logits.log_softmax(-1), q.logits.log_softmax(-1)
        kl.append((logp.exp() * (logp - logq)).sum(-1).double().numpy())
        agree.append((p.logits.argmax(-1) == q.logits.argmax(-1)).numpy())
    every_kl, every_agree = np.concatenate(kl), np.concatenate(agree)
    n, share = len(every_kl), every_agree.mean()
    assert 0 < share < 1  # both outcomes occur, so the binomial error is not zero
    assert rows["kld_mean_stderr"][0] == pytest.approx(every_kl.std(ddof=1) / math.sqrt(n), rel=1e-4)
    assert rows["top1_agreement_stderr"][0] == pytest.approx(100 * math.sqrt(share * (1 - share) / (n - 1)), rel=1e-9)
    assert rows["window_kld_sum"][3] == pytest.approx([w.sum() for w in kl], rel=1e-4, abs=1e-6)
    assert rows["window_top1_agree"][3] == tuple(int(w.sum()) for w in agree)
    assert rows["window_tokens"][3] == (63,) * 6


@pytest.mark.slow
def test_the_noise_floor_and_its_stderr_match_a_direct_computation_on_the_real_model(corpus, tmp_path, monkeypatch):
    """SmolLM2-135M run in bfloat16 against its float32 self (what a sweep's noise floor measures),
    126 builtin tokens, the KL exact (top_k = the vocabulary): the stored mean KLD, perplexity and
    their standard errors equal the textbook formulas over the per-token values."""
    from quantbench.backends.registry import get_backend

    monkeypatch.setattr(divergence, "cache_path", lambda key: tmp_path / "baseline.kld")
    source = models.resolve(ModelRef("embedded:smollm2-135m"))
    baseline = get_backend("baseline")
    half = baseline.quantize(source, baseline.Params(compute_dtype="bfloat16"), "cpu")
    params = DivergenceParams(seq_len=64, max_tokens=128, top_k=49152)
    rows = _rows(divergence.run(half, params, corpus, source))
    ppl_params = PerplexityParams(**params.model_dump(include=set(PerplexityParams.model_fields)))
    ppl_rows = _rows(perplexity.run(half, ppl_params, corpus, source))
    ids, _ = tokenize(half.tokenizer, corpus, params.max_tokens)
    reference = half.reference(source)
    kl, nll = [], []
    for p, q in zip(
        scored_windows(reference.logits, ids, params), scored_windows(half.logits, ids, params), strict=True
    ):
        logp, logq = p.logits.double().log_softmax(-1), q.logits.double().log_softmax(-1)
        kl.append((logp.exp() * (logp - logq)).sum(-1))
        nll.append(F.cross_entropy(q.logits.double(), q.targets, reduction="none"))
    kl, nll = torch.cat(kl).numpy(), torch.cat(nll).numpy()
    n = len(kl)
    assert n == 126 and 0 < kl.mean() < 0.01  # rounding to bf16 moves the model a little, not nothing
    assert rows["kld_mean"][0] == pytest.approx(kl.mean(), rel=1e-3)
    assert rows["kld_mean_stderr"][0] == pytest.approx(kl.std(ddof=1) / math.sqrt(n), rel=1e-2)
    ppl = math.exp(nll.mean())
    assert ppl_rows["perplexity"][0] == pytest.approx(ppl, rel=1e-5)
    assert ppl_rows["perplexity_stderr"][0] == pytest.approx(ppl * nll.std(ddof=1) / math.sqrt(n), rel=1e-3)


def test_a_model_against_itself_has_zero_kld_stderr(source, corpus):
    rows = _rows(divergence.run(_model(source), DivergenceParams(**PARAMS.model_dump()), corpus, source))
    assert rows["kld_mean_stderr"][0] == pytest.approx(0, abs=1e-7)
    assert rows["top1_agreement_stderr"][0] == 0.0


@pytest.mark.parametrize(
    ("total", "sq_total", "n", "expected"),
    [(6.0, 14.0, 3, math.sqrt((14 / 3 - 4) / 2)), (5.0, 25.0, 1, math.nan), (2.0, 2.0 - 1e-15, 2, 0.0)],
)
def test_mean_stderr_edge_cases(total, sq_total, n, expected):
    got = mean_stderr(total, sq_total, n)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_proportion_stderr_of_all_or_nothing_is_zero():
    assert proportion_stderr(10, 10) == proportion_stderr(0, 10) == 0.0
    assert math.isnan(proportion_stderr(1, 1))
