"""The llama.cpp engine on a tiny random Llama GGUF (tiny_gguf.py), and on the embedded model (slow)."""

from pathlib import Path

import gguf
import pytest
import torch
from tiny_gguf import write_tiny_gguf

from quantbench import models
from quantbench.engines.protocol import QuantizedModel
from quantbench.errors import QuantbenchError
from quantbench.spec import ModelRef

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'quantbench[gguf]')")

from quantbench.engines.llama_cpp import LlamaCppModel


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer):
    """(the F32 GGUF, its resolved model), resolved into a private cache."""
    root = tmp_path_factory.mktemp("tiny-gguf")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUANTBENCH_CACHE", str(root / "cache"))
        path = write_tiny_gguf(root / "tiny.gguf", tiny_tokenizer)
        yield path, models.resolve(ModelRef(str(path)))


@pytest.fixture(scope="module")
def engine(tiny) -> LlamaCppModel:
    path, source = tiny
    return LlamaCppModel.open(path, models.load_tokenizer(source), "llama.cpp F32", threads=2)


def test_it_is_the_protocol_with_the_file_facts(engine, tiny):
    _, source = tiny
    assert isinstance(engine, QuantizedModel)
    torch_weights = sum(p.numel() for p in models.load(source).parameters())  # tied embedding counted once
    assert engine.weight_bytes == 4 * torch_weights  # every tensor F32
    assert engine.bits_per_weight == 32.0
    assert engine.facts.tied and engine.decode_weight_bytes == engine.weight_bytes
    assert engine.vocab_size == 512 and engine.context_length == 512
    assert "F32×" in engine.kernel and "2 threads" in engine.kernel


def test_f32_logits_match_transformers_fp32_on_the_same_ids(engine, tiny):
    _, source = tiny
    ids = torch.randint(0, 512, (2, 96), generator=torch.Generator().manual_seed(0))
    ours = engine.logits(ids)
    theirs = models.load(source)(input_ids=ids).logits.detach()
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    # Logits span about ±1. Measured: 1.5e-3 with llama.cpp's f16 KV cache and flash attention (what
    # it runs by default, and so does the engine); 4e-6 with an f32 cache and no flash attention.
    assert (ours - theirs).abs().max() < 5e-3


def test_windows_are_scored_independently(engine):
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    both = engine.logits(ids)
    assert torch.equal(both[1:], engine.logits(ids[1:]))
    assert torch.equal(both[:1], engine.logits(ids[:1]))


def test_generate_decodes_a_batch_greedily_as_full_forwards_would(engine):
    ids = torch.randint(0, 512, (3, 20), generator=torch.Generator().manual_seed(2))
    calls = []
    out = engine.generate(ids, 6, lambda: calls.append(1))
    assert out.shape == (3, 6) and len(calls) == 6
    full = engine.logits(torch.cat([ids, out], dim=1))
    assert torch.equal(full[:, 19:-1].argmax(-1), out)


def test_generate_refuses_rows_the_context_cannot_hold(engine):
    with pytest.raises(QuantbenchError, match=r"exceed llama\.cpp's context"):
        engine.generate(torch.zeros((4, 120), dtype=torch.long), 10, lambda: None)


def test_hf_tokenizer_and_the_gguf_vocabulary_give_the_same_ids(engine):
    text = "The help topics describe how Python evaluates expressions, 42 times."
    assert engine._model.tokenize(text.encode(), add_bos=False, special=False) == engine.tokenizer(text).input_ids


def test_save_copies_the_file_that_reloads_as_the_same_model(engine, tmp_path):
    engine.save(tmp_path)
    copy = tmp_path / engine.path.name
    assert copy.read_bytes() == engine.path.read_bytes()
    reloaded = LlamaCppModel.open(copy, engine.tokenizer, "llama.cpp F32", threads=2)
    ids = torch.arange(30)[None]
    assert torch.equal(reloaded.logits(ids), engine.logits(ids))


def test_a_truncated_file_is_one_line(tiny, tmp_path):
    path, _ = tiny
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(QuantbenchError, match=r"broken\.gguf"):
        LlamaCppModel.open(broken, None, "x")


@pytest.mark.slow
def test_embedded_model_tokenizer_matches_its_gguf_vocabulary():
    source = models.resolve(ModelRef("embedded:smollm2-135m"))
    tokenizer = models.load_tokenizer(source)
    engine = LlamaCppModel.open(models.gguf_file(source), tokenizer, "llama.cpp Q4_1")
    text = Path(gguf.__file__).read_text()[:4000] + " Ünïcödé — 東京 🙂"
    assert engine._model.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(text).input_ids
    assert engine.facts.weights == sum(p.numel() for p in models.load(source).parameters())
    # Q4_1 blocks (5 bits per weight with their scale and minimum), a Q8_0 embedding, F32 norms.
    assert 5.7 < engine.bits_per_weight < 5.8 and engine.facts.types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def test_latency_eval_runs_through_llama_cpp(engine, tiny):
    from quantbench.evals import latency

    params = latency.LatencyParams(prompt_lengths=(32,), batch_sizes=(1, 3), new_tokens=4, repeats=1, min_seconds=0)
    rows = {name: value for name, value, *_ in latency.run(engine, params, None, tiny[1])}
    assert rows["prefill_seconds@len=32"] > 0
    assert rows["decode_tokens_per_second@batch=3"] > 0 and rows["decode_tokens_per_second@batch=1"] > 0
