"""llama.cpp's quantized KV cache types behind the kv eval, on a tiny random Llama GGUF (tiny_gguf.py)."""

import pytest
import torch
from tiny_gguf import write_tiny_gguf

from quantbench import models
from quantbench.corpora import Corpus, load_corpus
from quantbench.engines.kv_cache import KvCache
from quantbench.errors import QuantbenchError
from quantbench.evals import kv_cache
from quantbench.evals.kv_cache import KvCacheParams
from quantbench.spec import ModelRef

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'quantbench[gguf]')")

from quantbench.engines.llama_cpp import LlamaCppModel


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer):
    """(the F32 GGUF's engine, its resolved model), resolved into a private cache."""
    root = tmp_path_factory.mktemp("tiny-gguf-kv")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUANTBENCH_CACHE", str(root / "cache"))
        path = write_tiny_gguf(root / "tiny.gguf", tiny_tokenizer)
        source = models.resolve(ModelRef(str(path)))
        yield LlamaCppModel.open(path, models.load_tokenizer(source), "llama.cpp F32", threads=2), source


def _kld(p: torch.Tensor, q: torch.Tensor) -> float:
    logp, logq = p.log_softmax(-1), q.log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean().item()


def test_the_default_cache_reads_the_same_logits_as_one_pass(tiny):
    engine, _ = tiny
    windows = torch.randint(0, 512, (2, 40))
    cached = engine.kv_logits(windows, 20, 3, None)
    assert cached.shape == (2, 20, engine.vocab_size)
    torch.testing.assert_close(cached, engine.logits(windows)[:, 20:], rtol=0, atol=1e-4)


def test_q4_0_diverges_more_than_q8_0(tiny):
    engine, _ = tiny
    windows = torch.randint(0, 512, (1, 48))
    exact = engine.kv_logits(windows, 24, 1, None)
    q8, q4 = (engine.kv_logits(windows, 24, 1, KvCache("llama.cpp", t, 0)) for t in ("q8_0", "q4_0"))
    assert 0 < _kld(exact, q8) < _kld(exact, q4)


def test_the_eval_runs_on_the_engine(tiny, tiny_tokenizer, monkeypatch, tmp_path):
    engine, source = tiny
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path))
    corpus = Corpus("builtin-head", load_corpus("builtin").rows[:20])
    params = KvCacheParams(seq_len=32, max_tokens=128, kv_cache="llama.cpp-q4_0", step=4, buckets=2)
    m = {name: value for name, value, *_ in kv_cache.run(engine, params, corpus, source)}
    assert m["kv_kld_tokens"] == 4 * 15 and m["kv_tokens:depth1"] + m["kv_tokens:depth2"] == 60
    assert m["kv_kld_mean"] > 0


def test_a_transformers_cache_on_llama_cpp_is_one_line(tiny):
    engine, _ = tiny
    with pytest.raises(QuantbenchError, match=r"kv_cache quanto-int4 is a transformers cache, for torch trials"):
        engine.kv_logits(torch.zeros(1, 8, dtype=torch.long), 4, 1, KvCache("quanto", "int4", 64))


def test_a_type_llama_cpp_lacks_is_one_line(tiny):
    engine, _ = tiny
    with pytest.raises(QuantbenchError, match=r"has no ggml type 'q3_z'"):
        engine.kv_logits(torch.zeros(1, 8, dtype=torch.long), 4, 1, KvCache("llama.cpp", "q3_z", 64))
