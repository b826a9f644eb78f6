"""The command line end to end on the tiny model: what a user types, what they see, what is stored."""

import os
import re

import pytest
from support import ROOT

from quantbench.app.cli import EVAL_FLAGS, build_parser, main, run_evals
from quantbench.evals.registry import get_eval
from quantbench.results.store import read_results


@pytest.fixture
def run_args(tiny_model_dir, tmp_path):
    return ["run", "--model", str(tiny_model_dir), "--seq-len", "32", "--max-tokens", "128", "--store", str(tmp_path)]


def fp32_weight_bytes(vocab_size: int) -> int:
    """The tiny Llama of tests/support.py in float32: embeddings and lm_head (untied), per layer
    q/o 64x64, k/v 64x32 (2 KV heads of 16), gate/up/down 64x128 and two norms, a final norm."""
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    return 4 * (2 * vocab_size * 64 + 2 * per_layer + 64)


def test_run_stores_a_trial_that_results_lists(run_args, tmp_path, tiny_tokenizer, capsys):
    assert main(run_args) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "ppl" in out
    frame = read_results(tmp_path).frame
    assert set(frame["status"]) == {"ok"}
    metrics = dict(zip(frame["metric"], frame["value"], strict=True))
    assert metrics["perplexity"] > 1
    assert metrics["tokens_scored"] == 4 * 31
    assert metrics["weight_bytes"] == fp32_weight_bytes(len(tiny_tokenizer))
    assert metrics["peak_rss_bytes"] > metrics["weight_bytes"]  # the process holds the weights and more

    assert main(["results", "--store", str(tmp_path)]) == 0
    assert frame["trial_key"][0] in capsys.readouterr().out


def test_a_second_run_is_skipped_unless_forced(run_args, tmp_path, capsys):
    assert main(run_args) == 0
    first = read_results(tmp_path).frame["created_at"][0]
    assert main(run_args) == 0
    assert "already in the store" in capsys.readouterr().err
    assert read_results(tmp_path).frame["created_at"][0] == first
    assert main([*run_args, "--force"]) == 0
    assert read_results(tmp_path).frame["created_at"][0] > first


def test_two_methods_give_two_trials(run_args, tmp_path):
    assert main([*run_args, "--method", "baseline", "--method", "baseline:dtype=bfloat16"]) == 0
    assert read_results(tmp_path).frame["trial_key"].nunique() == 2


# Bad input through the CLI: tests/robustness/test_bad_input.py (one table, also README's).


@pytest.fixture
def fault_backends(monkeypatch):
    # The worker process imports them too; the inherited path keeps a PYTHONPATH=$PWD checkout its own.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(
        "QUANTBENCH_BACKENDS",
        ";".join(f"{n}=fault_backends:{c}Backend" for n, c in [("raising", "Raising"), ("aborting", "Aborting"),
                                                               ("hanging", "Hanging")]),
    )  # fmt: skip


def test_an_exception_inside_a_trial_is_stored_as_a_failed_trial(run_args, tmp_path, fault_backends, capsys):
    assert main([*run_args, "--method", "raising", "--method", "baseline"]) == 1
    assert "failed in" in capsys.readouterr().err
    frame = read_results(tmp_path).frame
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == 1 and failed["method"].iloc[0] == "raising"
    assert failed["error"].iloc[0].startswith("RuntimeError: simulated kernel crash")
    assert (frame["method"] == "baseline").any()  # the next trial ran


def test_a_worker_that_aborts_is_recorded_with_its_signal_and_stderr(run_args, tmp_path, fault_backends):
    assert main([*run_args, "--method", "aborting", "--method", "baseline"]) == 1
    frame = read_results(tmp_path).frame
    failed = frame[frame["status"] == "failed"]
    assert failed["error"].iloc[0].startswith("worker died (killed by SIGABRT)")
    assert "about to abort" in failed["error"].iloc[0]
    assert set(frame.loc[frame["status"] == "ok", "method"]) == {"baseline"}


def test_a_hanging_worker_is_killed_at_its_timeout(run_args, tmp_path, fault_backends):
    assert main([*run_args, "--method", "hanging", "--timeout", "20"]) == 1
    frame = read_results(tmp_path).frame
    assert frame["error"].iloc[0].startswith("timed out after 20 s")


def test_methods_lists_each_parameter_with_its_default_and_description(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "dtype=float32" in out
    # the contract's flags, read from each adapter: the third line of its entry
    entries = {block.split()[0]: block.splitlines() for block in re.split(r"\n(?=\S)", out)}
    assert entries["gptq"][2].strip() == "calibrates on text (calibration=...); saves its quantized checkpoint"
    assert entries["rtn"][2].strip() == "no calibration text; cannot save its quantized model"
    assert "compute_dtype=float32: dtype the model is loaded in and computes in" in out  # baseline
    assert "bits=4: bits per weight code (hqq 0.2 stores 5 and 6 bits in whole bytes)" in out


def evals_of(*argv: str) -> dict[str, dict]:
    return {spec.name: dict(spec.params) for spec in run_evals(build_parser().parse_args(["run", *argv]))}


def test_each_eval_flag_sets_its_field_in_the_evals_it_names_only():
    evals = evals_of("--eval", "perplexity,divergence,tasks", "--batch-size", "4", "--seq-len", "64")
    assert evals == {"perplexity": {"seq_len": 64, "batch_size": 4}, "divergence": {"seq_len": 64, "batch_size": 4},
                     "tasks": {}}  # fmt: skip
    evals = evals_of("--eval", "tasks,perplexity", "--task-batch-size", "2", "--task-data", "piqa=a.jsonl")
    assert evals == {"tasks": {"batch_size": 2, "task_data": ["piqa=a.jsonl"]}, "perplexity": {}}
    assert evals_of() == {"perplexity": {}}  # no flag restates a default: the eval's own apply


def test_an_evals_own_parameters_win_over_a_flag():
    evals = evals_of("--eval", "perplexity:seq_len=32,stride=16", "--eval", "divergence", "--seq-len", "64")
    assert evals == {"perplexity": {"seq_len": "32", "stride": "16"}, "divergence": {"seq_len": 64}}


def test_repeated_and_comma_separated_task_data_add_up():
    evals = evals_of("--eval", "tasks", "--task-data", "piqa=a.jsonl,arc=b.jsonl", "--task-data", "boolq=c.jsonl")
    assert evals["tasks"]["task_data"] == ["piqa=a.jsonl", "arc=b.jsonl", "boolq=c.jsonl"]


def test_each_eval_flags_help_is_its_field_description():
    actions = {a.option_strings[0]: a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions}
    for flag, (evals, field) in EVAL_FLAGS.items():
        info = get_eval(evals[0]).Params.model_fields[field]
        assert all(get_eval(e).Params.model_fields[field].description == info.description for e in evals)
        assert actions[flag].help.startswith(f"{', '.join(evals)}: {info.description}")
        assert actions[flag].default is None  # defaults live in the Params only


def test_eval_parameters_given_with_eval_reach_the_trial(run_args, tmp_path):
    args = [a for a in run_args if a not in ("--seq-len", "32", "--max-tokens", "128")]
    assert main([*args, "--eval", "perplexity:seq_len=16,max_tokens=64"]) == 0
    metrics = read_results(tmp_path).frame.set_index("metric")["value"]
    assert metrics["tokens_scored"] == 4 * 15
