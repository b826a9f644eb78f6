"""The command line end to end on the tiny model: what a user types, what they see, what is stored."""

import pytest
from support import ROOT

from quantbench.app.cli import main
from quantbench.results.store import read_results


@pytest.fixture
def run_args(tiny_model_dir, tmp_path):
    return ["run", "--model", str(tiny_model_dir), "--seq-len", "32", "--max-tokens", "128", "--store", str(tmp_path)]


def test_run_stores_a_trial_that_results_lists(run_args, tmp_path, capsys):
    assert main(run_args) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "ppl" in out
    frame = read_results(tmp_path).frame
    assert set(frame["status"]) == {"ok"}
    metrics = dict(zip(frame["metric"], frame["value"], strict=True))
    assert metrics["perplexity"] > 1
    assert metrics["tokens_scored"] == 4 * 31
    assert metrics["weight_bytes"] > 0 and metrics["peak_rss_bytes"] > 0

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
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))  # the worker process imports them too
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
    assert "compute_dtype=float32: dtype the model is loaded in and computes in" in out  # baseline
    assert "bits=4: bits per weight code (hqq 0.2 stores 5 and 6 bits in whole bytes)" in out
