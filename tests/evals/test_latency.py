"""The latency profile: its repeat loop, the forced decode length,
metric names and units, prompt-length capping, parameter errors, and the CLI end to end.
No assertion depends on how fast this machine is."""

import pytest
import torch
from support import build_tiny_llama

from quantbench.app.cli import main
from quantbench.engines.torch_model import TorchModel, weight_bytes
from quantbench.errors import QuantbenchError
from quantbench.evals import latency
from quantbench.evals.latency import LatencyParams
from quantbench.results.store import read_results
from quantbench.spec import validate_params

SMALL = dict(prompt_lengths=(8, 16), batch_sizes=(1, 2), new_tokens=4, repeats=2, min_seconds=0.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads on two cores shared with other jobs make each tiny matmul wait for the other
    thread; one thread keeps this file fast. Restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(tokenizer, **config) -> TorchModel:
    module = build_tiny_llama(vocab_size=len(tokenizer), **config)
    return TorchModel(module, tokenizer, "cpu", weight_bytes(module), 32.0, "torch float32 matmul")


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer) -> TorchModel:
    return _tiny(tiny_tokenizer)


class TickClock:
    """A clock that advances one second per reading: a timed span then counts the readings between
    its ends, so what the eval times is checked exactly, whatever this machine's speed."""

    cuda = False

    def __init__(self) -> None:
        self.ticks = 0

    def mark(self) -> float:
        self.ticks += 1
        return float(self.ticks)

    def seconds(self, start: float, end: float) -> float:
        return end - start


class Recorder:
    """The model protocol around a model, recording each prefill and generate call and how many
    times each generate called back."""

    def __init__(self, model) -> None:
        self.model = model
        self.prefills: list[tuple[int, int]] = []
        self.generates: list[tuple[tuple[int, int], int, int]] = []  # (ids shape, n_new, callbacks)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def prefill(self, ids):
        self.prefills.append(tuple(ids.shape))
        return self.model.prefill(ids)

    def generate(self, ids, n_new, on_token):
        calls = []
        out = self.model.generate(ids, n_new, lambda: calls.append(on_token()))
        self.generates.append((tuple(ids.shape), n_new, len(calls)))
        return out


@pytest.mark.parametrize(
    ("warmup", "repeats", "min_seconds", "expected_samples"),
    [(0, 3, 0.0, 3), (2, 3, 0.0, 3), (1, 3, 2.0, 8), (0, 12, 2.0, 12)],
)
def test_sample_needs_both_the_repeats_and_the_minimum_duration(warmup, repeats, min_seconds, expected_samples):
    calls = []

    def measure():
        calls.append(1)
        return 0.25  # exact in binary, so the sums are too

    samples = latency.sample(measure, warmup, repeats, min_seconds)
    assert len(samples) == expected_samples
    assert len(calls) == warmup + expected_samples  # warm-up calls ran but were not kept


def test_spread_is_range_over_median():
    assert latency.spread([1.0, 2.0, 4.0]) == pytest.approx(1.5)


def test_prompt_ids_are_deterministic_and_free_of_special_tokens(tiny):
    ids = latency.prompt_ids(tiny, 3, 50)
    assert ids.shape == (3, 50)
    assert torch.equal(ids, latency.prompt_ids(tiny, 3, 50))
    assert not set(ids.flatten().tolist()) & set(tiny.tokenizer.all_special_ids)
    assert not torch.equal(ids[0], ids[1])  # rows differ, so a batch is not one prompt repeated


@torch.inference_mode()
def test_decode_produces_exactly_new_tokens_even_when_eos_is_the_likely_token(tiny_tokenizer):
    model = _tiny(tiny_tokenizer)
    ids = latency.prompt_ids(model, 2, 12)
    # Make EOS the token greedy decoding picks first, for every row.
    likely = model.module(input_ids=ids).logits[:, -1].argmax(-1)
    model.module.generation_config.eos_token_id = likely.tolist()
    free = model.module.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert free.shape[1] == ids.shape[1] + 1  # the control: without the protocol, generation stops at once

    seconds, generated = latency.decode(model, ids, 6, TickClock())
    assert generated.shape == (2, 6)
    assert not set(generated.flatten().tolist()) & set(likely.tolist())
    assert seconds == 5  # one clock reading per token: the 5 decode steps between token 1 and token 6


def test_decode_fails_when_the_engine_generates_fewer_tokens(tiny, monkeypatch):
    ids = latency.prompt_ids(tiny, 1, 8)
    monkeypatch.setattr(tiny, "generate", lambda ids, n_new, on_token: on_token() or ids[:, :1])
    with pytest.raises(RuntimeError, match="produced 1 tokens per row, expected 4"):
        latency.decode(tiny, ids, 4, latency.Clock())


def test_run_prefills_and_decodes_exactly_the_protocols_calls(tiny):
    model = Recorder(tiny)
    params = LatencyParams(**{**SMALL, "warmup": 1, "repeats": 2, "decode_prompt_length": 10})
    latency.run(model, params, None, None)
    # the first call (shortest prompt), then per length one warm-up and two timed calls, all at batch 1
    assert model.prefills == [(1, 8)] + [(1, 8)] * 3 + [(1, 16)] * 3
    # per batch size one warm-up and two timed decodes; each generate calls back once per new token
    assert model.generates == [((1, 10), 4, 4)] * 3 + [((2, 10), 4, 4)] * 3


def test_decode_throughput_counts_every_row_and_n_minus_one_steps(tiny, monkeypatch):
    monkeypatch.setattr(latency, "clock_for", lambda device: TickClock())
    params = LatencyParams(**{**SMALL, "prompt_lengths": (8,), "batch_sizes": (2,), "new_tokens": 5})
    values = {name: value for name, value, _ in latency.run(tiny, params, None, None)}
    # each decode's 5 callbacks are 5 clock readings: token 1 to token 5 spans 4 ticks (seconds)
    assert values["decode_ms_per_token@batch=2"] == 1e3
    assert values["decode_tokens_per_second@batch=2"] == 2 * 4 / 4
    assert values["decode_spread@batch=2"] == 0
    assert values["decode_weight_bytes_per_second@batch=2"] == tiny.decode_weight_bytes
    assert values["prefill_seconds@len=8"] == 1  # two readings around each prefill


def _expected_names(lengths, batches):
    names = {"cpu_threads", "prompt_length_cap", "first_call_seconds", "inference_peak_rss_bytes"}
    for n in lengths:
        names |= {f"prefill_seconds@len={n}", f"prefill_seconds_p90@len={n}", f"prefill_spread@len={n}"}
    for b in batches:
        names |= {
            f"decode_tokens_per_second@batch={b}",
            f"decode_tokens_per_second_p90@batch={b}",
            f"decode_ms_per_token@batch={b}",
            f"decode_spread@batch={b}",
            f"decode_weight_bytes_per_second@batch={b}",
        }
    return names


UNITS = {
    "prefill_seconds": "s",
    "prefill_seconds_p90": "s",
    "prefill_spread": "",
    "decode_tokens_per_second": "tokens/s",
    "decode_tokens_per_second_p90": "tokens/s",
    "decode_ms_per_token": "ms",
    "decode_spread": "",
    "decode_weight_bytes_per_second": "bytes/s",
    "first_call_seconds": "s",
    "cpu_threads": "threads",
    "prompt_length_cap": "tokens",
    "inference_peak_rss_bytes": "bytes",
}


def test_run_reports_every_metric_with_its_unit(tiny):
    rows = latency.run(tiny, LatencyParams(**SMALL), None, None)
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names))
    assert set(names) == _expected_names([8, 16], [1, 2])  # no energy metric off CUDA
    for name, value, unit in rows:
        assert unit == UNITS[name.split("@")[0]], name
        assert value == value and value >= 0, name  # value == value: not NaN
    values = {name: value for name, value, _ in rows}
    assert values["cpu_threads"] == 1
    assert values["prompt_length_cap"] == 512
    for b in (1, 2):  # p90 is the slow tail of each
        assert values[f"decode_tokens_per_second_p90@batch={b}"] <= values[f"decode_tokens_per_second@batch={b}"]
    assert values["prefill_seconds_p90@len=8"] >= values["prefill_seconds@len=8"]


def test_prompt_lengths_are_capped_by_the_models_context(tiny_tokenizer, monkeypatch):
    model = _tiny(tiny_tokenizer, max_position_embeddings=64)
    shapes = []
    generate = model.generate
    monkeypatch.setattr(
        model, "generate", lambda ids, n, on_token: shapes.append(ids.shape) or generate(ids, n, on_token)
    )
    params = LatencyParams(**{**SMALL, "prompt_lengths": (16, 64, 100, 2048), "decode_prompt_length": 128})
    values = {name: value for name, value, _ in latency.run(model, params, None, None)}
    assert values["prompt_length_cap"] == 64
    assert {name for name in values if name.startswith("prefill_seconds@")} == {
        "prefill_seconds@len=16",
        "prefill_seconds@len=64",
    }
    assert {shape[1] for shape in shapes} == {64 - params.new_tokens}  # decode prompt + new tokens fit too


@pytest.mark.parametrize(
    ("lengths", "cap", "expected"),
    [((128, 512, 2048), 8192, [128, 512, 2048]), ((128, 512, 2048), 512, [128, 512]), ((64, 32), 16, [16])],
)
def test_capped_lengths(lengths, cap, expected):
    assert latency.capped_lengths(lengths, cap) == expected


def test_defaults():
    params = LatencyParams()
    assert (params.prompt_lengths, params.batch_sizes) == ((128, 512, 2048), (1, 4, 16))
    assert (params.new_tokens, params.warmup, params.repeats, params.decode_prompt_length) == (32, 1, 3, 128)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prompt_lengths": []}, "prompt_lengths: "),
        ({"prompt_lengths": [128, 0]}, "prompt_lengths.1: Input should be greater than 0"),
        ({"batch_sizes": []}, "batch_sizes: "),
        ({"batch_sizes": [-1]}, "batch_sizes.0: Input should be greater than 0"),
        ({"new_tokens": 1}, "new_tokens: Input should be greater than or equal to 2"),
        ({"decode_prompt_length": 0}, "decode_prompt_length: Input should be greater than 0"),
        ({"warmup": -1}, "warmup: Input should be greater than or equal to 0"),
        ({"repeats": 0}, "repeats: Input should be greater than 0"),
        ({"min_seconds": -0.5}, "min_seconds: Input should be greater than or equal to 0"),
        ({"repeat": 3}, "repeat: unknown parameter"),
    ],
)
def test_invalid_parameters_fail_with_one_line(raw, message):
    with pytest.raises(QuantbenchError) as info:
        validate_params(LatencyParams, raw, "eval 'latency'")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_new_tokens_that_do_not_fit_the_context_fail_before_any_work(tiny_model_dir):
    from quantbench.models import resolve
    from quantbench.spec import ModelRef

    source = resolve(ModelRef(str(tiny_model_dir)))
    latency.check_inputs(source, LatencyParams(new_tokens=511), None)
    with pytest.raises(QuantbenchError, match="new_tokens 512 does not fit the model's context of 512 tokens"):
        latency.check_inputs(source, LatencyParams(new_tokens=512), None)


def test_cli_rejects_a_malformed_list(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--eval", "latency", "--prompt-lengths", "16,x"])
    assert info.value.code == 2
    assert "expected comma-separated integers, got '16,x'" in capsys.readouterr().err


def test_cli_rejects_an_invalid_value_before_running(tiny_model_dir, tmp_path, capsys):
    args = ["run", "--model", str(tiny_model_dir), "--eval", "latency", "--new-tokens", "1", "--store", str(tmp_path)]
    assert main(args) == 2
    assert "new_tokens: Input should be greater than or equal to 2" in capsys.readouterr().err
    assert read_results(tmp_path).frame.empty


def test_cli_runs_the_latency_eval_and_stores_its_metrics(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trial's worker process reads it (see one_thread)
    args = ["run", "--model", str(tiny_model_dir), "--eval", "latency", "--prompt-lengths", "16,32"]
    args += ["--batch-sizes", "1,2", "--new-tokens", "4", "--repeats", "2", "--store", str(tmp_path)]
    assert main(args) == 0
    frame = read_results(tmp_path).frame
    assert set(frame["status"]) == {"ok"}
    rows = frame[frame["eval"] == "latency"]
    assert _expected_names([16, 32], [1, 2]) <= set(rows["metric"])
    units = dict(zip(rows["metric"], rows["unit"], strict=True))
    assert units["decode_tokens_per_second@batch=2"] == "tokens/s" and units["prefill_seconds@len=32"] == "s"
    assert rows.loc[rows["metric"] == "cpu_threads", "value"].item() == 1
