"""Every trial stores quantized_weight_fraction, measured from the quantized model: a method that
stored nothing is refused in one line, one that left over a third in float says so in the row's note
and on the console. Trials run in this process (execute), on tiny random models built here."""

import logging

import pytest

from quantbench.errors import QuantbenchError
from quantbench.results.store import read_results
from quantbench.runner.trial import execute, plan_trial, prepare_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef

PERPLEXITY = [EvalSpec("perplexity", {"seq_len": 32, "max_tokens": 64})]
EVERY_LAYER = "+".join(
    f"model.layers.{i}.{proj}"
    for i in range(2)
    for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
)  # fmt: skip


def run_trial(model, method: str, store, **params):
    spec = plan_trial(ModelRef(str(model)), MethodSpec(method, params), PERPLEXITY)
    outcome = execute(prepare_trial(spec, store), store)
    assert outcome.status == "ok", outcome.error
    rows = read_results(store).frame
    return rows[(rows.trial_key == spec.key) & (rows.metric == "quantized_weight_fraction")].iloc[0]


def test_a_method_that_quantized_every_block_matrix_stores_one_and_no_note(tiny_model_dir, tmp_path):
    row = run_trial(tiny_model_dir, "rtn", tmp_path)
    assert (row.value, row.note, row.unit) == (1.0, "", "fraction")


def test_the_baseline_stores_zero_without_failing(tiny_model_dir, tmp_path):
    assert run_trial(tiny_model_dir, "baseline", tmp_path).value == 0.0


def test_leaving_the_experts_in_float_is_noted_in_the_row_and_on_the_console(tiny_mixtral_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="quantbench.runner.trial"):
        row = run_trial(tiny_mixtral_dir, "hqq", tmp_path)
    note = "80% of the matrix weights left unquantized (18 of 26 matrices: MixtralExperts ×16, MixtralTopKRouter ×2)"
    assert row.value == pytest.approx(24576 / 123392) and row.note == note
    assert caplog.messages == [f"hqq:group_size=64,nbits=4: {note}"]


def test_a_method_that_quantized_nothing_is_refused_and_stores_nothing(tiny_model_dir, tmp_path):
    spec = plan_trial(ModelRef(str(tiny_model_dir)), MethodSpec("rtn", {"skip": EVERY_LAYER}), PERPLEXITY)
    with pytest.raises(
        QuantbenchError, match=r"^rtn quantized 0 of 14 weight matrices: the model's layers are Linear ×14$"
    ):
        execute(prepare_trial(spec, tmp_path), tmp_path)
    assert read_results(tmp_path).frame.empty
