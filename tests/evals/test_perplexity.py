import json
import math
import subprocess
import sys

import pytest
import torch
from support import ROOT, LogitsFreedBeforeNextForward, build_tiny_llama

from quantbench.corpora import Corpus, load_corpus
from quantbench.errors import QuantbenchError
from quantbench.evals import perplexity
from quantbench.evals.perplexity import PREFIX_SETTLED_CHARS, PerplexityParams, _encode, evaluate, tokenize, windows
from quantbench.spec import validate_params


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    model = build_tiny_llama(vocab_size=len(tiny_tokenizer))
    return model, lambda ids: model(input_ids=ids).logits


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("builtin")


def _ids(tokenizer, corpus, n):
    return torch.tensor(tokenizer(corpus.text, verbose=False)["input_ids"][:n])


@torch.inference_mode()
def test_matches_the_models_own_loss_on_non_overlapping_windows(tiny, tiny_tokenizer, corpus):
    model, logits_fn = tiny
    seq_len, n_windows = 32, 5
    result = evaluate(logits_fn, tiny_tokenizer, corpus, PerplexityParams(seq_len=seq_len, max_tokens=170))
    ids = _ids(tiny_tokenizer, corpus, seq_len * n_windows).view(n_windows, seq_len)
    # Independent computation: transformers' own shifted loss, window by window, equal weights.
    losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in ids]
    expected = math.exp(sum(losses) / len(losses))
    assert result.windows == n_windows
    assert result.tokens_scored == n_windows * (seq_len - 1)
    assert result.perplexity == pytest.approx(expected, rel=1e-4)


@torch.inference_mode()
def test_sliding_windows_match_the_transformers_documented_recipe(tiny, tiny_tokenizer, corpus):
    model, logits_fn = tiny
    seq_len, stride, n = 32, 8, 96
    result = evaluate(logits_fn, tiny_tokenizer, corpus, PerplexityParams(seq_len=seq_len, stride=stride, max_tokens=n))
    ids = _ids(tiny_tokenizer, corpus, n)[None]
    # The recipe from the transformers perplexity guide: mask the already-scored tokens with -100.
    nll_sum, count, prev_end = 0.0, 0, 0
    for begin in range(0, n - seq_len + 1, stride):
        end = begin + seq_len
        target = ids[:, begin:end].clone()
        target[:, : -(end - prev_end)] = -100
        scored = (target[:, 1:] != -100).sum().item()
        nll_sum += model(input_ids=ids[:, begin:end], labels=target).loss.item() * scored
        count += scored
        prev_end = end
    assert result.tokens_scored == count == n - 1
    assert result.perplexity == pytest.approx(math.exp(nll_sum / count), rel=1e-4)


def test_batching_windows_does_not_change_the_result(tiny, tiny_tokenizer, corpus):
    _, logits_fn = tiny
    one = evaluate(logits_fn, tiny_tokenizer, corpus, PerplexityParams(seq_len=32, max_tokens=200))
    three = evaluate(logits_fn, tiny_tokenizer, corpus, PerplexityParams(seq_len=32, max_tokens=200, batch_size=3))
    assert three.perplexity == pytest.approx(one.perplexity, rel=1e-5)
    assert three.tokens_scored == one.tokens_scored


def test_each_batch_of_logits_is_freed_before_the_next_forward(tiny, tiny_tokenizer, corpus):
    logits_fn = LogitsFreedBeforeNextForward(tiny[1])
    evaluate(logits_fn, tiny_tokenizer, corpus, PerplexityParams(seq_len=32, max_tokens=200, batch_size=2))
    assert logits_fn.calls == 3


def test_bits_per_byte_and_word_perplexity_follow_their_definitions(tiny, tiny_tokenizer):
    _, logits_fn = tiny
    text = "alpha beta gamma delta epsilon " * 40
    corpus = Corpus("words", (text,))
    result = evaluate(
        logits_fn, tiny_tokenizer, corpus, PerplexityParams(seq_len=len(tiny_tokenizer(text)["input_ids"]))
    )
    # One window over the whole text: everything after the first token is scored.
    offsets = tiny_tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    covered = text[offsets[1][0] :]
    total_nll = result.nll_mean * result.tokens_scored
    assert result.bits_per_byte == pytest.approx(total_nll / math.log(2) / len(covered.encode()), rel=1e-9)
    assert result.word_perplexity == pytest.approx(math.exp(total_nll / len(covered.split())), rel=1e-9)


@pytest.mark.parametrize(("n", "seq_len", "stride"), [(10, 4, 4), (10, 4, 1), (11, 5, 3), (4, 4, 2)])
def test_windows_score_every_token_after_the_first_at_most_once(n, seq_len, stride):
    scored = [t for w in windows(n, seq_len, stride) for t in range(w.first_target, w.end)]
    assert len(scored) == len(set(scored))
    assert min(scored) == 1
    assert all(w.end - w.begin == seq_len for w in windows(n, seq_len, stride))


def _bos_tokenizer(tokenizer):
    """`tokenizer` that starts every text with its BOS, "<eos>" (id 0), as Llama's tokenizers do."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<eos>", eos_token="<eos>")


@pytest.mark.parametrize("adds_bos", [False, True])
@torch.inference_mode()
def test_the_llamacpp_protocol_scores_each_chunks_second_half_after_bos(tiny, tiny_tokenizer, corpus, adds_bos):
    model, logits_fn = tiny
    tokenizer = _bos_tokenizer(tiny_tokenizer) if adds_bos else tiny_tokenizer
    seq_len, n_chunks = 32, 5
    params = PerplexityParams(seq_len=seq_len, max_tokens=170, protocol="llamacpp")
    result = evaluate(logits_fn, tokenizer, corpus, params)
    chunks = _ids(tokenizer, corpus, seq_len * n_chunks).view(n_chunks, seq_len)
    assert (chunks[0, 0].item() == 0) is adds_bos  # the stream itself starts with BOS when the tokenizer adds it
    # Independent computation, as llama-perplexity does it: BOS over each chunk's first token (when
    # the tokenizer adds one), the targets after position seq_len/2 scored.
    inputs = chunks.clone()
    if adds_bos:
        inputs[:, 0] = 0
    labels = chunks.clone()
    labels[:, : seq_len // 2 + 1] = -100
    losses = [model(input_ids=x[None], labels=y[None]).loss.item() for x, y in zip(inputs, labels, strict=True)]
    assert result.windows == n_chunks
    assert result.tokens_scored == n_chunks * (seq_len - seq_len // 2 - 1)
    assert result.perplexity == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    gptq = evaluate(logits_fn, tokenizer, corpus, PerplexityParams(seq_len=seq_len, max_tokens=170))
    assert gptq.perplexity != pytest.approx(result.perplexity, rel=1e-3)


@pytest.mark.parametrize(("given", "message"), [
    ({"stride": 8}, "stride is for the gptq protocol"),
    ({"seq_len": 2}, "seq_len >= 3"),
    ({"protocol": "llama"}, "'gptq' or 'llamacpp'"),
])  # fmt: skip
def test_the_llamacpp_protocol_refuses_what_it_cannot_score(given, message):
    with pytest.raises(QuantbenchError, match=message) as error:
        validate_params(PerplexityParams, {"protocol": "llamacpp", **given}, "eval 'perplexity'")
    assert "\n" not in str(error.value)


def test_the_default_protocol_is_not_dumped_so_stored_protocols_do_not_move():
    assert "protocol" not in PerplexityParams().model_dump(mode="json")
    assert PerplexityParams(protocol="llamacpp").model_dump(mode="json")["protocol"] == "llamacpp"


@pytest.mark.parametrize("max_tokens", [1, 4096, 30_000, None])
def test_a_prefix_tokenizes_as_the_whole_text(tiny_tokenizer, wikitext_test, max_tokens):
    """`tokenize` reads only a prefix of the corpus when it needs few tokens; its tokens and spans
    are the whole text's, on WikiText-2 and on text whose words are longer than the settled margin."""
    no_spaces = "x=" + "ab+" * (PREFIX_SETTLED_CHARS * 3) + " end"
    for corpus in (load_corpus(str(wikitext_test)), Corpus("long words", (no_spaces,) * 20)):
        whole_ids, whole_spans = _encode(tiny_tokenizer, corpus.text)
        ids, spans = tokenize(tiny_tokenizer, corpus, max_tokens)
        assert torch.equal(ids, whole_ids[:max_tokens]) and torch.equal(spans, whole_spans[:max_tokens])


def test_tokens_cut_by_a_prefix_are_never_kept(tiny_tokenizer, wikitext_test, monkeypatch):
    """Every token count from a prefix about as long as the tokens it must hold (a first cut lands
    inside a word for some of them): the words around the cut are read again in a longer prefix."""
    corpus = Corpus("wikitext", (wikitext_test.read_text(encoding="utf-8")[:40_000],))
    whole_ids = _encode(tiny_tokenizer, corpus.text)[0]
    monkeypatch.setattr(perplexity, "PREFIX_CHARS_PER_TOKEN", 1)  # this tokenizer's tokens average 1.6 chars
    for max_tokens in range(1, 400):
        assert torch.equal(tokenize(tiny_tokenizer, corpus, max_tokens)[0], whole_ids[:max_tokens]), max_tokens


def test_corpus_shorter_than_one_window(tiny, tiny_tokenizer):
    _, logits_fn = tiny
    with pytest.raises(QuantbenchError, match="fewer than one window of seq_len 4096"):
        evaluate(logits_fn, tiny_tokenizer, Corpus("short", ("a few words",)), PerplexityParams(seq_len=4096))


PEAK_SCRIPT = """
import json, resource, sys
sys.path.insert(0, "tests")
import torch
from support import build_tokenizer, build_tiny_llama
from quantbench.corpora import Corpus
from quantbench.evals.perplexity import PerplexityParams, evaluate
tok = build_tokenizer()
# A wide vocabulary makes each window's logits large (32 KiB per token), so keeping them
# around would show up at once in the peak.
model = build_tiny_llama(vocab_size=8192)
text = open(sys.argv[1]).read()[: int(sys.argv[2])]
with torch.inference_mode():
    evaluate(lambda ids: model(input_ids=ids).logits, tok, Corpus("w", (text,)), PerplexityParams(seq_len=256))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": before}))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_corpus_length(wikitext_test):
    def peak_mib(chars: int) -> float:
        out = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(wikitext_test), str(chars)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"] / 1024

    small, large = peak_mib(40_000), peak_mib(160_000)
    # 4x the text is ~40k more tokens: keeping their logits would cost > 1.2 GiB, while the
    # ids, offsets and the tokenizer's own bookkeeping for them stay within tens of MiB.
    assert large - small < 150, (small, large)
