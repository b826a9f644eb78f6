"""Every eval runs on a model that is not a torch module (numpy_model.py), through the entry point the
runner calls: `get_eval(name).run(model, params, corpus, source)`. Expected values are computed
here from the numpy arrays, not read back from the evals."""

import json
import math

import numpy as np
import pytest
import torch
from numpy_model import CONTEXT_LENGTH, NumpyModel, source_of, write_model

from quantbench.corpora import Corpus, load_corpus
from quantbench.engines.protocol import QuantizedModel
from quantbench.evals.registry import get_eval
from quantbench.spec import validate_params

PIQA = [
    {"goal": "To open a jar", "sol1": "twist the lid.", "sol2": "freeze the jar.", "label": 0},
    {"goal": "To dry a towel", "sol1": "put it in water.", "sol2": "hang it in the sun.", "label": 1},
    {"goal": "To read a book", "sol1": "open the cover.", "sol2": "close the cover.", "label": 0},
    {"goal": "To light a room", "sol1": "turn off the lamp.", "sol2": "turn on the lamp.", "label": 1},
    {"goal": "To cool tea", "sol1": "wait a while.", "sol2": "boil it again.", "label": 0},
]


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_tokenizer):
    return write_model(tmp_path_factory.mktemp("numpy-model"), tiny_tokenizer)


@pytest.fixture(scope="module")
def quantized(source) -> NumpyModel:
    return NumpyModel.load(source.path, bits=4)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus("builtin")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))


def _run(name: str, model, raw: dict, corpus, source) -> dict[str, float]:
    module = get_eval(name)
    rows = module.run(model, validate_params(module.Params, raw, f"eval {name!r}"), corpus, source)
    return {row[0]: row[1] for row in rows}


def test_the_numpy_model_is_the_protocol_and_not_a_torch_module(quantized):
    assert isinstance(quantized, QuantizedModel)
    assert not isinstance(quantized, torch.nn.Module) and not hasattr(quantized, "module")


def test_its_decoding_cache_agrees_with_its_full_forward(quantized):
    ids = torch.tensor([[5, 9, 30, 2], [7, 7, 1, 40]])
    generated = quantized.generate(ids, 3, lambda: None)
    whole = torch.cat([ids, generated], dim=1)
    assert torch.equal(quantized.logits(whole[:, :-1])[:, ids.shape[1] - 1 :].argmax(-1), generated)


def _nll(model: NumpyModel, ids: np.ndarray) -> float:
    """Summed negative log-likelihood of ids[1:] given the earlier ids, from the arrays directly."""
    x = model.weight("E")[ids]
    h = np.tanh(x + np.cumsum(x, axis=0) / np.arange(1, len(ids) + 1)[:, None])
    logits = (h @ model.weight("W"))[:-1].astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())


def test_perplexity(quantized, corpus, source):
    values = _run("perplexity", quantized, {"seq_len": 32, "max_tokens": 256}, corpus, source)
    ids = np.array(quantized.tokenizer(corpus.text)["input_ids"][:256])
    nll = sum(_nll(quantized, ids[at : at + 32]) for at in range(0, 256, 32))
    assert values["tokens_scored"] == 8 * 31
    assert values["perplexity"] == pytest.approx(math.exp(nll / (8 * 31)), rel=1e-5)


def test_divergence_from_its_own_unquantized_weights(quantized, corpus, source):
    raw = {"seq_len": 32, "max_tokens": 256, "top_k": 8}
    itself = _run("divergence", quantized.reference(source), raw, corpus, source)
    assert itself["kld_max"] == pytest.approx(0, abs=1e-6) and itself["top1_agreement"] == 100
    values = _run("divergence", quantized, raw, corpus, source)
    assert values["baseline_cache_hit"] == 1  # the reference pass above built it
    assert values["kld_mean"] > 1e-3 and values["top1_agreement"] < 100
    ids = np.array(quantized.tokenizer(corpus.text)["input_ids"][:256])
    nll_q = sum(_nll(quantized, ids[at : at + 32]) for at in range(0, 256, 32))
    nll_p = sum(_nll(quantized.reference(source), ids[at : at + 32]) for at in range(0, 256, 32))
    assert values["ppl_ratio"] == pytest.approx(math.exp((nll_q - nll_p) / (8 * 31)), rel=1e-5)


def test_latency(quantized, source):
    raw = {"prompt_lengths": [8, 1000], "batch_sizes": [1, 3], "new_tokens": 4, "repeats": 2, "min_seconds": 0}
    values = _run("latency", quantized, raw, None, source)
    names = {"cpu_threads", "prompt_length_cap", "first_call_seconds", "inference_peak_rss_bytes"}
    names |= {f"prefill_{s}@len={n}" for s in ("seconds", "seconds_p90", "spread") for n in (8, CONTEXT_LENGTH)}
    names |= {
        f"decode_{s}@batch={b}"
        for s in ("tokens_per_second", "tokens_per_second_p90", "ms_per_token", "spread", "weight_bytes_per_second")
        for b in (1, 3)
    }
    assert set(values) == names
    assert values["prompt_length_cap"] == CONTEXT_LENGTH
    ratio = values["decode_weight_bytes_per_second@batch=1"] / (1e3 / values["decode_ms_per_token@batch=1"])
    assert ratio == pytest.approx(quantized.arrays["W_codes"].nbytes + quantized.arrays["W_scales"].nbytes)


def test_tasks_on_a_tiny_local_file(quantized, tmp_path, source):
    data = tmp_path / "piqa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in PIQA))
    values = _run("tasks", quantized, {"tasks": "piqa", "task_data": [f"piqa={data}"]}, None, source)
    right = 0
    for row in PIQA:  # piqa's stock prompt, a space before each choice, the higher log-likelihood wins
        context = f"Question: {row['goal']}\nAnswer:"
        scores = [_choice_logprob(quantized, context, " " + row[s]) for s in ("sol1", "sol2")]
        right += scores.index(max(scores)) == row["label"]
    assert 0 < right < len(PIQA)  # the case tells right from wrong
    assert values["task:piqa:acc"] == pytest.approx(right / len(PIQA))
    assert values["task:piqa:samples"] == len(PIQA)


def _choice_logprob(model: NumpyModel, context: str, continuation: str) -> float:
    tokenizer = model.tokenizer
    n_context = len(tokenizer(context)["input_ids"])
    whole = np.array(tokenizer(context + continuation)["input_ids"])
    return -(_nll(model, whole) - _nll(model, whole[:n_context]))


def test_checkpoint_reloads_as_the_same_model(quantized, tmp_path, source):
    values = _run("memory", quantized, {"checkpoint": True}, None, source)
    assert values["checkpoint_bytes"] > quantized.weight_bytes  # the arrays plus the tokenizer files
    quantized.save(tmp_path)
    reloaded = NumpyModel.load(tmp_path)
    assert reloaded.weight_bytes == quantized.weight_bytes
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert torch.equal(reloaded.logits(ids), quantized.logits(ids))
    assert source_of(tmp_path).fingerprint != source.fingerprint  # codes and scales, not the fp32 source
