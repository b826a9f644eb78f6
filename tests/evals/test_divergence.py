import json
import shutil

import numpy as np
import pytest
import torch
from support import WIKITEXT_TEST, LogitsFreedBeforeNextForward
from support import noisy_model as _quantized

from quantbench import models
from quantbench.corpora import Corpus, load_corpus
from quantbench.errors import QuantbenchError
from quantbench.evals import divergence
from quantbench.evals.divergence import DivergenceParams
from quantbench.evals.perplexity import scored_windows, tokenize
from quantbench.spec import ModelRef

PARAMS = DivergenceParams(seq_len=64, max_tokens=400, batch_size=2)


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path, monkeypatch):
    """Baseline caches go to a fresh dir; the real model keeps the shared cache (its dequantized GGUF)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))


def _run(model, corpus, source, params=PARAMS) -> dict[str, float]:
    return {name: value for name, value, *_ in divergence.run(model, params, corpus, source)}


def _exact_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    logp, logq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def test_a_model_compared_with_itself_has_zero_divergence(source, corpus):
    m = _run(_quantized(source), corpus, source)
    assert m["kld_mean"] == pytest.approx(0, abs=1e-7) and m["kld_max"] == pytest.approx(0, abs=1e-6)
    assert m["top1_agreement"] == 100.0
    assert m["ppl_ratio"] == pytest.approx(1, abs=1e-6) and m["delta_p_rms"] == pytest.approx(0, abs=1e-6)
    assert m["kld_tokens"] == 6 * 63  # 400 tokens: 6 windows of 64, each predicts 63


def test_a_perturbed_model_diverges(source, corpus):
    m = _run(_quantized(source, noise=0.5), corpus, source)
    assert m["kld_mean"] > 1e-3 and m["kld_p99"] >= m["kld_p90"] >= m["kld_median"] > 0
    assert m["kld_max"] >= m["kld_p99"] and m["top1_agreement"] < 100
    assert m["ppl_ratio"] != pytest.approx(1, abs=1e-4)


def test_topk_covering_the_whole_vocabulary_is_the_exact_kl(source, corpus, tiny_tokenizer):
    base, quant = _quantized(source), _quantized(source, noise=0.5)
    params = PARAMS.model_copy(update={"top_k": 10_000})  # > vocabulary: no tail bucket
    m = _run(quant, corpus, source, params)
    ids, _ = tokenize(tiny_tokenizer, corpus, params.max_tokens)
    exact = torch.cat(
        [_exact_kl(p.logits, q.logits) for p, q in zip(scored_windows(base.logits, ids, params),
                                                       scored_windows(quant.logits, ids, params), strict=True)]
    )  # fmt: skip
    assert m["kld_mean"] == pytest.approx(exact.double().mean().item(), rel=1e-5)


def test_each_batch_of_logits_is_freed_before_the_next_forward(source, corpus, tiny_tokenizer):
    ids, _ = tokenize(tiny_tokenizer, corpus, PARAMS.max_tokens)
    base, quant = (LogitsFreedBeforeNextForward(_quantized(source, noise).logits) for noise in (0.0, 0.5))
    key, vocab = divergence.cache_key(source, ids, PARAMS, "cpu"), len(tiny_tokenizer)
    records = divergence.baseline(key, 6 * 63, PARAMS, lambda: (vocab, scored_windows(base, ids, PARAMS)), lambda: None)
    divergence.tally(records.records, scored_windows(quant, ids, PARAMS), lambda: None)
    assert base.calls == quant.calls == 3


def test_the_baseline_is_cached_and_rebuilt_for_another_corpus(source, corpus):
    model = _quantized(source, noise=0.1)
    first, second = _run(model, corpus, source), _run(model, corpus, source)
    assert (first["baseline_cache_hit"], second["baseline_cache_hit"]) == (0.0, 1.0)
    assert second["kld_mean"] == first["kld_mean"]
    # record: (top_k + tail_samples) × (uint16 id + fp32 log-prob) + two fp32, plus the header spread over the tokens
    assert first["baseline_cache_bytes_per_token"] == pytest.approx((64 + 64) * 6 + 8, abs=4)
    other = Corpus("other", (corpus.rows[1] * 3,))
    assert _run(model, other, source)["baseline_cache_hit"] == 0.0
    assert len(list((models.cache_dir() / "divergence").glob("*.kld"))) == 2


@pytest.mark.parametrize("change", ["seq_len", "top_k", "corpus", "protocol"])
def test_a_cache_built_under_another_key_is_never_read(source, corpus, tiny_tokenizer, change):
    _run(_quantized(source), corpus, source)
    ids, _ = tokenize(tiny_tokenizer, corpus, PARAMS.max_tokens)
    params = {"seq_len": PARAMS.model_copy(update={"seq_len": 32}), "top_k": PARAMS.model_copy(update={"top_k": 8}),
              "protocol": PARAMS.model_copy(update={"protocol": "llamacpp"})}  # fmt: skip
    other_ids = ids.flip(0) if change == "corpus" else ids
    key = divergence.cache_key(source, other_ids, params.get(change, PARAMS), "cpu")
    # Put the existing file where the other key's cache would be: its header still names the old key.
    (built,) = (models.cache_dir() / "divergence").glob("*.kld")
    shutil.copy(built, divergence.cache_path(key))
    assert divergence.read_cache(divergence.cache_path(key), key, 6 * 63) is None


def test_the_llamacpp_protocol_compares_each_chunks_second_half(source, corpus):
    params = PARAMS.model_copy(update={"protocol": "llamacpp"})
    assert "protocol" not in divergence.cache_key(source, torch.arange(9), PARAMS, "cpu")  # old caches still hit
    same = _run(_quantized(source), corpus, source, params)
    assert same["kld_tokens"] == 6 * (64 - 32 - 1) and same["kld_mean"] == pytest.approx(0, abs=1e-7)
    assert _run(_quantized(source, noise=0.5), corpus, source, params)["kld_mean"] > 1e-3


def test_a_truncated_cache_is_rebuilt(source, corpus):
    model = _quantized(source, noise=0.1)
    expected = _run(model, corpus, source)["kld_mean"]
    (built,) = (models.cache_dir() / "divergence").glob("*.kld")
    built.write_bytes(built.read_bytes()[:-100])
    again = _run(model, corpus, source)
    assert again["baseline_cache_hit"] == 0.0 and again["kld_mean"] == pytest.approx(expected, rel=1e-6)


def test_an_already_quantized_reference_is_refused(tiny_model_dir, tmp_path, corpus):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "gptq-model")
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (copy / "config.json").write_text(json.dumps(config))
    source = models.ResolvedModel(ModelRef(str(copy)), copy, "local", "x")
    with pytest.raises(QuantbenchError, match=r"needs the unquantized model .* already quantized \(gptq\)"):
        divergence.check_inputs(source, PARAMS, corpus)


def test_a_corpus_shorter_than_one_window_is_refused(source):
    with pytest.raises(QuantbenchError, match="fewer than one window"):
        divergence.check_inputs(source, PARAMS, Corpus("short", ("a few words",)))


def test_top_k_must_be_positive():
    with pytest.raises(ValueError, match="top_k"):
        DivergenceParams(top_k=0)


@pytest.mark.slow
def test_the_estimate_is_within_two_percent_of_the_exact_kl_on_the_real_model():
    """SmolLM2-135M (fp32 reference) vs its RTN 4-bit (group 64) version, 2048 WikiText-2 tokens.
    Measured on this machine's CPU (2 cores, 2026-11-23): exact mean KL 0.38246 nats, estimate 0.38282
    (+0.09%), p99 2.2461 vs 2.2703 (+1.1%). Top-64 with the rest as one bucket gave 0.303 (-21%)."""
    from quantbench.backends.registry import get_backend

    source = models.resolve(ModelRef("embedded:smollm2-135m"))
    params = DivergenceParams(seq_len=512, max_tokens=2048)
    base = get_backend("baseline").quantize(source, get_backend("baseline").Params(), "cpu")
    rtn = get_backend("rtn")
    quant = rtn.quantize(source, rtn.Params(bits=4, group_size=64), "cpu")
    ids, _ = tokenize(base.tokenizer, load_corpus(str(WIKITEXT_TEST)), params.max_tokens)
    dtype = divergence.record_dtype(params.top_k, params.tail_samples, 49152)
    exact, estimate = [], []
    for p, q in zip(scored_windows(base.logits, ids, params), scored_windows(quant.logits, ids, params), strict=True):
        exact.append(_exact_kl(p.logits, q.logits))
        records = divergence.baseline_records(p.logits, p.targets, dtype, seed=p.window.begin)
        estimate.append(divergence.compare(records, q.logits, q.targets).kld)
    exact, estimate = torch.cat(exact).double(), torch.cat(estimate).double()
    assert exact.mean() > 1e-3
    assert estimate.mean().item() == pytest.approx(exact.mean().item(), rel=0.02)
    assert np.percentile(estimate.numpy(), 99) == pytest.approx(np.percentile(exact.numpy(), 99), rel=0.05)
