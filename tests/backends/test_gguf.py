"""The gguf method: F32 conversion, llama.cpp's k-quants, measured by the evals on the same tokens."""

import math

import gguf
import pytest
import torch
from support import WIKITEXT_TEST
from tiny_gguf import write_tiny_gguf

from quantbench import models
from quantbench.backends.gguf import TYPES, GgufBackend, fallback_note, tensor_bytes, unquantized_gguf
from quantbench.corpora import load_corpus
from quantbench.engines.llama_cpp import GgufFacts
from quantbench.errors import QuantbenchError
from quantbench.evals import divergence, latency, perplexity
from quantbench.spec import ModelRef, validate_params

BACKEND = GgufBackend()


def test_an_unknown_type_is_refused_with_the_valid_ones():
    with pytest.raises(QuantbenchError, match="Q4_K_M") as error:
        validate_params(GgufBackend.Params, {"quant_type": "Q4_K_X"}, "method 'gguf'")
    assert "\n" not in str(error.value)
    assert all(f"'{name}'" in str(error.value) for name in [*TYPES, "source"])


def test_the_fallback_note_says_which_types_llama_cpp_wrote_for_the_narrow_rows():
    facts = GgufFacts(0, 1, 0, True, matrices=(("Q5_0", 576), ("Q5_0", 576), ("Q8_0", 576), ("Q4_K", 1536)))
    ((name, value, unit, note),) = fallback_note(facts, "Q4_K_M")
    assert (name, value, unit) == ("fallback_tensors", 3, "tensors")
    assert note == (
        "3 of 4 matrices have rows of 576 weights, not a multiple of Q4_K's 256-weight block: "
        "llama.cpp wrote Q5_0×2, Q8_0×1 for them"
    )
    assert fallback_note(facts, "Q8_0") == ()  # 576 is a multiple of Q8_0's 32-weight block


def test_a_source_file_has_no_layout_to_price():
    with pytest.raises(QuantbenchError, match="source"):
        BACKEND.layout(validate_params(GgufBackend.Params, {"quant_type": "source"}, "gguf"), "cpu")
    assert math.isnan(GgufBackend.Params(quant_type="source").bits)


@pytest.mark.parametrize(("quant_type", "cols", "expected"), [
    ("Q4_K_M", 512, 2 * 144),  # two 256-weight super-blocks of 144 bytes per row
    ("Q4_K_M", 576, 18 * 22),  # 576 is no multiple of 256: Q5_0, 18 blocks of 32 in 22 bytes
    ("Q2_K", 576, 18 * 18),  # Q4_0, 18 bytes per 32 weights
    ("Q8_0", 576, 18 * 34),
    ("Q5_1", 576, 18 * 24),  # Q5_K_M's fallback here: a scale and a minimum per 32 weights
    ("Q4_1", 576, 18 * 20),
])  # fmt: skip
def test_layout_prices_the_type_llama_cpp_writes(quant_type, cols, expected):
    layout = BACKEND.layout(validate_params(GgufBackend.Params, {"quant_type": quant_type}, "gguf"), "cpu")
    assert layout.linear_bytes(3, cols) == 3 * expected
    assert layout.bits == TYPES[quant_type][1]


def test_every_type_has_a_llama_cpp_file_type_and_a_block_size():
    llama_cpp = pytest.importorskip("llama_cpp")
    for name, (base, _) in TYPES.items():
        assert hasattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
        assert gguf.GGMLQuantizationType[base] in gguf.GGML_QUANT_SIZES
    assert tensor_bytes("Q6_K", 1, 256) == 210


def test_cuda_is_refused_with_the_reason():
    reason = BACKEND.check("cuda").reason
    assert not BACKEND.check("cuda").ok and ("CUDA" in reason or "cuda" in reason)


def test_a_transformers_directory_is_refused_in_one_line(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path))
    with pytest.raises(QuantbenchError, match="needs a GGUF source"):
        unquantized_gguf(models.resolve(ModelRef(str(tiny_model_dir))))
    assert not any(tmp_path.rglob("*.gguf"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer):
    """A tiny random Llama GGUF, resolved, in a private cache (set for the module's tests)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'quantbench[gguf]')")
    root = tmp_path_factory.mktemp("gguf-backend")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUANTBENCH_CACHE", str(root / "cache"))
        path = write_tiny_gguf(root / "tiny.gguf", tiny_tokenizer)
        yield models.resolve(ModelRef(str(path)))


def _divergence(model, source) -> dict[str, float]:
    params = divergence.DivergenceParams(seq_len=128, max_tokens=512)
    return dict((name, value) for name, value, *_ in divergence.run(model, params, load_corpus("builtin"), source))


def test_f32_conversion_keeps_every_tensor_and_key(tiny):
    f32 = unquantized_gguf(tiny)
    before, after = gguf.GGUFReader(models.gguf_file(tiny)), gguf.GGUFReader(f32)
    assert [t.name for t in after.tensors] == [t.name for t in before.tensors]
    assert {t.tensor_type.name for t in after.tensors} == {"F32"}
    assert set(after.fields) == set(before.fields)
    assert unquantized_gguf(tiny).stat().st_mtime_ns == f32.stat().st_mtime_ns  # converted once


def _quantized(tiny, quant_type: str):
    params = validate_params(GgufBackend.Params, {"quant_type": quant_type}, "gguf")
    model = BACKEND.quantize(tiny, params, "cpu")
    reader = gguf.GGUFReader(model.path)
    assert model.weight_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert model.weight_bytes < model.path.stat().st_size < model.weight_bytes + 100_000  # + header, padding
    # Every 2-D tensor has 256-wide rows, so the type asked for is the one written (Q2_K's mix
    # gives some tensors Q3_K/Q6_K); the kernel names what the file holds.
    base = TYPES[quant_type][0]
    assert model.facts.types[base] >= 8 and f"{base}×" in model.kernel
    return model


def test_tiny_model_quantizes_to_two_types_and_is_measured(tiny):
    q8, q2 = (_divergence(_quantized(tiny, t), tiny) for t in ("Q8_0", "Q2_K"))
    # Measured on this model (random weights, builtin corpus, 512 tokens): Q8_0 2.1e-4 nats and 95%
    # top-1 agreement; Q2_K 0.145 nats and 20% (near-uniform outputs flip their top token easily).
    assert 5e-5 < q8["kld_mean"] < 1e-3 and q8["top1_agreement"] > 85
    assert 0.05 < q2["kld_mean"] < 0.5 and q2["top1_agreement"] < q8["top1_agreement"]


def test_a_source_file_is_measured_as_it_is(tiny):
    model = BACKEND.quantize(tiny, GgufBackend.Params(quant_type="source"), "cpu")
    assert model.path == models.gguf_file(tiny)  # neither converted nor quantized
    assert model.kernel.startswith("llama.cpp ALL_F32 file as given") and "F32×" in model.kernel
    assert abs(_divergence(model, tiny)["kld_mean"]) < 1e-5  # against its own dequantized weights


def _trial_rows(source: str, method: str, store) -> dict[str, tuple[float, str]]:
    from quantbench.app.cli import main
    from quantbench.results.store import read_results

    args = ["run", "--model", source, "--method", method, "--eval", "perplexity", "--seq-len", "64"]
    assert main([*args, "--max-tokens", "128", "--store", str(store)]) == 0
    frame = read_results(store).frame
    return {m: (v, n) for m, v, n in zip(frame["metric"], frame["value"], frame["note"], strict=True)}


def test_a_trial_stores_the_files_types_bytes_threads_and_llama_cpp_build(tiny, tmp_path):
    rows = _trial_rows(str(models.gguf_file(tiny)), "gguf:quant_type=Q8_0", tmp_path)
    quantized = models.cache_dir() / "gguf" / f"{tiny.fingerprint[:16]}-Q8_0.gguf"
    types = {m.removeprefix("tensors:"): v for m, (v, _) in rows.items() if m.startswith("tensors:")}
    assert types == dict(GgufFacts.read(quantized).types) and types["Q8_0"] == 15  # 2 × 7 matrices + the embedding
    assert rows["file_bytes"][0] == quantized.stat().st_size
    assert rows["threads"][0] == torch.get_num_threads()
    build = rows["llama_cpp_build"][1]
    assert build.startswith("llama.cpp ") and "ggml " in build and "CPU" in build
    assert "fallback_tensors" not in rows  # 256-wide rows take every type


def test_a_type_the_rows_cannot_take_leaves_a_note_of_what_llama_cpp_wrote(
    tiny_tokenizer, tmp_path, monkeypatch, capsys
):
    from quantbench.app.cli import main

    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    narrow = write_tiny_gguf(tmp_path / "narrow.gguf", tiny_tokenizer, hidden=96)  # 96: no multiple of 256
    rows = _trial_rows(str(narrow), "gguf:quant_type=Q4_K_M", tmp_path / "store")
    count, note = rows["fallback_tensors"]
    # The matrices 96 wide (all but ffn_down, 512 wide) cannot hold Q4_K's super-blocks.
    assert count == 13 and note.startswith("13 of 15 matrices have rows of 96 weights") and "Q5_0×" in note
    assert rows["tensors:Q4_K"][0] + rows.get("tensors:Q6_K", (0,))[0] == 2
    capsys.readouterr()
    assert main(["results", "--store", str(tmp_path / "store")]) == 0
    assert f"fallback_tensors: {note}" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_gguf_model_is_one_line_and_nothing_is_written(tiny, tmp_path, capsys, damage):
    from quantbench.app.cli import main

    broken = tmp_path / "model.gguf"
    data = models.gguf_file(tiny).read_bytes()
    broken.write_bytes(data[:100_000] if damage == "truncated" else b"PK\x03\x04 not a GGUF file" * 100)
    store = tmp_path / "store"
    args = ["run", "--model", str(broken), "--method", "gguf:quant_type=Q8_0", "--eval", "perplexity"]
    assert main([*args, "--store", str(store)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("quantbench: error: cannot read GGUF file") and "\n" not in error
    assert not any(store.rglob("*.parquet")) and not any((models.cache_dir() / "gguf").glob("model*"))


def test_the_f32_file_through_llama_cpp_matches_the_torch_reference(tiny):
    from quantbench.engines.llama_cpp import LlamaCppModel

    model = LlamaCppModel.open(unquantized_gguf(tiny), models.load_tokenizer(tiny), "llama.cpp F32")
    rows = _divergence(model, tiny)
    # Measured: -8e-7 (the tail estimate can dip below zero) and 100% agreement.
    assert abs(rows["kld_mean"]) < 1e-5 and rows["top1_agreement"] == 100.0


def _llamacpp_perplexities(source, corpus, seq_len: int, max_tokens: int) -> tuple[float, float, int]:
    """Perplexity under the llamacpp protocol through llama.cpp on the F32 GGUF and through
    transformers on the fp32 model, and the tokens scored."""
    from quantbench.engines.llama_cpp import LlamaCppModel

    tokenizer = models.load_tokenizer(source)
    engine = LlamaCppModel.open(unquantized_gguf(source), tokenizer, "llama.cpp F32")
    params = perplexity.PerplexityParams(seq_len=seq_len, max_tokens=max_tokens, protocol="llamacpp")
    ours = perplexity.evaluate(engine.logits, tokenizer, corpus, params)
    theirs = perplexity.evaluate(engine.reference(source).logits, tokenizer, corpus, params)
    assert ours.tokens_scored == theirs.tokens_scored
    return ours.perplexity, theirs.perplexity, ours.tokens_scored


def test_the_llamacpp_protocol_agrees_through_llama_cpp_and_transformers(tiny):
    ours, theirs, tokens = _llamacpp_perplexities(tiny, load_corpus("builtin"), 128, 512)
    assert tokens == 4 * 63 and ours == pytest.approx(theirs, rel=1e-3)


@pytest.mark.slow
def test_the_llamacpp_protocol_agrees_on_the_embedded_model():
    pytest.importorskip("llama_cpp")
    source = models.resolve(ModelRef("embedded:smollm2-135m"))
    ours, theirs, tokens = _llamacpp_perplexities(source, load_corpus(str(WIKITEXT_TEST)), 512, 1024)
    assert tokens == 2 * 255 and ours == pytest.approx(theirs, rel=1e-3)


@pytest.mark.slow
def test_a_q4_k_m_trial_of_the_embedded_model(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    from quantbench.app.cli import main
    from quantbench.results.store import read_results

    args = ["run", "--model", "embedded:smollm2-135m", "--corpus", str(WIKITEXT_TEST), "--seq-len", "128"]
    args += ["--max-tokens", "256", "--store", str(tmp_path), "--method", "gguf:quant_type=Q4_K_M"]
    assert main([*args, "--eval", "perplexity,divergence"]) == 0
    frame = read_results(tmp_path).frame
    values = dict(zip(frame["metric"], frame["value"], strict=True))
    assert math.isfinite(values["perplexity"]) and 5 < values["perplexity"] < 80
    # Q4_K_M of SmolLM2 (mostly Q5_0 after fallback): KLD ~0.05 nats on WikiText-2 windows of 512.
    assert 0.005 < values["kld_mean"] < 0.3
    assert "Q5_0×" in frame["kernel"].iloc[0]


def test_the_evals_check_a_gguf_source_before_quantizing(tiny):
    params = perplexity.PerplexityParams(seq_len=128, max_tokens=512)
    divergence.check_inputs(tiny, divergence.DivergenceParams(seq_len=128), load_corpus("builtin"))
    perplexity.check_inputs(tiny, params, load_corpus("builtin"))
    latency.check_inputs(tiny, latency.LatencyParams(new_tokens=16), None)
    with pytest.raises(QuantbenchError, match="does not fit the model's context of 512"):
        latency.check_inputs(tiny, latency.LatencyParams(new_tokens=512), None)


@pytest.mark.slow
def test_the_embedded_models_f32_gguf_through_llama_cpp_matches_transformers_fp32():
    pytest.importorskip("llama_cpp")
    from quantbench.engines.llama_cpp import LlamaCppModel

    source = models.resolve(ModelRef("embedded:smollm2-135m"))
    model = LlamaCppModel.open(unquantized_gguf(source), models.load_tokenizer(source), "llama.cpp F32")
    params = divergence.DivergenceParams(seq_len=128, max_tokens=512)
    rows = {name: value for name, value, *_ in divergence.run(model, params, load_corpus(str(WIKITEXT_TEST)), source)}
    # Measured: |mean KL| < 5e-6 nats (2048 tokens in 512-token windows: 99.9% top-1 agreement).
    assert abs(rows["kld_mean"]) <= 1e-4 and rows["top1_agreement"] > 99
