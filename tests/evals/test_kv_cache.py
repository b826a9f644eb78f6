import pytest
import torch
from support import noisy_model

from quantbench.corpora import Corpus
from quantbench.errors import QuantbenchError
from quantbench.evals import kv_cache
from quantbench.evals.kv_cache import KvCacheParams
from quantbench.evals.registry import get_eval

# The tiny model's K/V rows are 2 heads × 16 channels: quanto's groups (along the flattened rows of
# a head-major cache) must divide 32 × tokens, so 16 fits every length. top_k covers the 512-token
# vocabulary: the exact KL, which a sampled tail could push below zero where it is tiny.
PARAMS = KvCacheParams(seq_len=32, max_tokens=200, batch_size=2, kv_group_size=16, top_k=512)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def corpus(corpus):
    """The builtin corpus's first rows: enough for the windows, and seconds less to tokenize."""
    return Corpus("builtin-head", corpus.rows[:20])


@pytest.fixture(scope="module")
def model(source):
    return noisy_model(source)


def _run(model, corpus, source, **update) -> dict[str, float]:
    params = PARAMS.model_copy(update=update)
    return {name: value for name, value, *_ in kv_cache.run(model, params, corpus, source)}


def test_it_is_the_kv_eval():
    assert get_eval("kv") is kv_cache


def test_the_cached_protocol_reads_the_same_logits_as_one_forward(model):
    windows = torch.randint(0, 512, (2, 64))
    full = model.logits(windows)
    for step in (1, 5):
        cached = model.kv_logits(windows[:, :-1], 32, step, None)
        assert cached.shape == (2, 31, full.shape[-1])
        torch.testing.assert_close(cached, full[:, 32:-1], rtol=0, atol=1e-4)


def test_a_quantized_cache_moves_only_what_reads_it(model):
    windows = torch.randint(0, 512, (1, 48))
    kv = PARAMS.model_copy(update={"kv_cache": "quanto-int2"}).kv()
    exact, quantized = model.kv_logits(windows, 24, 1, None), model.kv_logits(windows, 24, 1, kv)
    # the first scored token reads the quantized context; its logits move
    assert (exact[:, 0] - quantized[:, 0]).abs().max() > 1e-3


def test_a_full_precision_cache_has_zero_divergence(model, corpus, source):
    m = _run(model, corpus, source, kv_cache="none")
    assert m["kv_kld_mean"] == 0.0 and m["kv_kld_max"] == 0.0 and m["kv_top1_agreement"] == 100.0
    assert m["kv_kld_tokens"] == 6 * 15  # 200 tokens: 6 chunks of 32, the last 15 of each scored


@pytest.mark.parametrize("backend", ["quanto", "hqq"])
def test_two_bits_diverge_more_than_four(model, corpus, source, backend):
    # 4 tokens per forward: hqq's quantizer optimizes every time the cache grows (slow)
    int4 = _run(model, corpus, source, kv_cache=f"{backend}-int4", step=4)
    int2 = _run(model, corpus, source, kv_cache=f"{backend}-int2", step=4)
    assert 0 < int4["kv_kld_mean"] < int2["kv_kld_mean"]
    assert int2["kv_top1_agreement"] <= int4["kv_top1_agreement"] <= 100


def test_the_buckets_add_up_to_the_whole(model, corpus, source):
    m = _run(model, corpus, source, kv_cache="quanto-int2", buckets=3)
    tokens = [m[f"kv_tokens:depth{i}"] for i in (1, 2, 3)]
    assert sum(tokens) == m["kv_kld_tokens"] and tokens == [30, 30, 30]  # 5 positions × 6 chunks each
    kld = sum(m[f"kv_kld_mean:depth{i}"] * n for i, n in zip((1, 2, 3), tokens, strict=True))
    assert kld / sum(tokens) == pytest.approx(m["kv_kld_mean"], rel=1e-6)
    agree = sum(m[f"kv_top1_agreement:depth{i}"] * n for i, n in zip((1, 2, 3), tokens, strict=True))
    assert agree / sum(tokens) == pytest.approx(m["kv_top1_agreement"], rel=1e-9)


def test_the_bucket_notes_name_their_positions(model, corpus, source):
    params = PARAMS.model_copy(update={"kv_cache": "none", "buckets": 2})
    notes = {row[0]: row[3] for row in kv_cache.run(model, params, corpus, source) if ":depth" in row[0]}
    assert notes["kv_kld_mean:depth1"] == "targets at positions 17-24 of each 32-token window"
    assert notes["kv_kld_mean:depth2"] == "targets at positions 25-31 of each 32-token window"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("kivi-int2", r"cannot build it: Unknown quantization backend `kivi`"),
        ("quanto-int3", "cannot build it"),
        ("int4", "expected BACKEND-DTYPE"),
        ("quanto-q4_0", "take intN"),
    ],
)
def test_a_cache_the_installed_libraries_lack_is_one_line(source, corpus, spec, message):
    params = PARAMS.model_copy(update={"kv_cache": spec})
    with pytest.raises(QuantbenchError, match=message) as info:
        kv_cache.check_inputs(source, params, corpus)
    assert "\n" not in str(info.value)


def test_a_llama_cpp_cache_type_on_the_torch_engine_is_one_line(model, corpus, source):
    with pytest.raises(QuantbenchError, match=r"kv_cache llama\.cpp-q4_0 is a llama\.cpp cache type, for GGUF trials"):
        _run(model, corpus, source, kv_cache="llama.cpp-q4_0")


def test_a_group_size_the_cache_cannot_split_is_one_line(model, corpus, source):
    with pytest.raises(QuantbenchError, match=r"kv_cache quanto-int4: .*try another kv_group_size"):
        _run(model, corpus, source, kv_cache="quanto-int4", kv_group_size=48)


@pytest.mark.parametrize(
    "update",
    [{"buckets": 16}, {"protocol": "gptq"}, {"step": 0}, {"stride": 8}],
)
def test_bad_parameters_are_refused(update):
    with pytest.raises(ValueError):
        KvCacheParams(**{"seq_len": 32, **update})


def test_an_engine_without_a_cache_is_one_line(model, corpus, source):
    class NoCache:
        tokenizer, device = model.tokenizer, "cpu"

        def reference(self, _source):
            return model

    with pytest.raises(QuantbenchError, match=r"engine running this model \(NoCache\) has no KV cache"):
        kv_cache.run(NoCache(), PARAMS, corpus, source)
