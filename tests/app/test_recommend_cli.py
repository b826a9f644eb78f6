"""`quantbench recommend` on a synthetic store of the smollm2-135m preset (its architecture is bundled,
so the planner prices it with no download): the readable table, the excluded list, the sweep file,
and one line for each kind of bad input."""

import pytest
import yaml
from recommend_trials import fill, store_trials

from quantbench.app.cli import main
from quantbench.runner.sweep import load_sweep

MODEL = "smollm2-135m"


@pytest.fixture
def store(tmp_path):
    return fill(tmp_path / "store", *store_trials(MODEL))


def args(store, *more):
    return ["recommend", "--model", MODEL, "--store", str(store), "--context", "512", *more]


def test_ranked_table_and_excluded_list(store, capsys):
    assert main(args(store, "--memory", "0.85", "--max-kld", "0.085")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{MODEL} on 0.85 GiB, cpu: context 512 × batch 1, KV cache fp16; bounds: memory 0.85 GiB, "
                          "max KLD 0.085; quality against baseline trial base")  # fmt: skip
    ranked = out.split("ranked (")[1].split("excluded:")[0]
    assert "triton:bits=4,group_size=64" in ranked and "0.08 (+0.005)" in ranked and "planner only" in ranked
    excluded = out.split("excluded:")[1].split("fit the budget")[0]
    assert "rtn:bits=4,group_size=64" in excluded and "max KLD 0.085: 0.09 (-0.005)" in excluded
    assert "RuntimeError: out of memory" in excluded and "traceback" not in excluded
    # hqq 3-bit and nf4 (and other defaults) fit 0.85 GiB but the store has no trial of them.
    assert "bnb:bits=4 " not in out.split("fit the budget")[1]  # the failed bnb trial is measured
    assert "hqq:group_size=64,nbits=4" not in out.split("fit the budget")[1]
    assert "--write-sweep FILE" in out


def test_write_sweep_measures_exactly_the_unmeasured(store, tmp_path, capsys):
    sweep_path = tmp_path / "missing.yaml"
    candidates = ["--candidate", "hqq:nbits=3,group_size=64", "--candidate", "rtn:bits=8,group_size=64"]
    assert (
        main(args(store, "--gpu", "RTX 4090", "--max-kld", "0.05", *candidates, "--write-sweep", str(sweep_path))) == 0
    )
    assert f"wrote {sweep_path}" in capsys.readouterr().out
    sweep, specs = load_sweep(sweep_path)
    assert yaml.safe_load(sweep_path.read_text())["methods"] == ["hqq:group_size=64,nbits=3"]
    assert sweep.models == [MODEL] and set(sweep.evals) == {"perplexity", "divergence"} and len(specs) == 1


def test_nothing_meets_the_bounds(store, capsys):
    assert main(args(store, "--memory", "0.5", "--max-kld", "0.001", "--candidate", "rtn:bits=8,group_size=64")) == 0
    out = capsys.readouterr().out
    assert "no measured setting meets every bound" in out and "fit the budget" not in out
    # Every bound broken is listed: rtn8 is too big and too far from the baseline's output.
    assert "memory 0.5 GiB: 0.868 (-0.368); max KLD 0.001: 0.01 (-0.009)" in out


@pytest.mark.parametrize(
    "more, message",
    [
        (["--gpu", "RTX 9999", "--max-kld", "0.1"], "unknown GPU 'RTX 9999'; known GPUs: RTX 3060"),
        (["--gpu", "T4", "--max-kld", "small"], "--max-kld must be a number, got 'small'"),
        (["--memory", "lots", "--max-kld", "0.1"], "--memory must be a number, got 'lots'"),
        (["--gpu", "T4"], "give at least one quality bound"),
    ],
)
def test_bad_input_is_one_line(store, capsys, more, message):
    assert main(args(store, *more)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"quantbench: error: {message}") and err.count("\n") == 1, err


def test_a_model_with_no_trials_is_one_line(store, capsys):
    argv = ["recommend", "--model", "llama-3.1-8b", "--store", str(store), "--gpu", "T4", "--max-kld", "0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"quantbench: error: no trials of 'llama-3.1-8b' in the store; models there: {MODEL}\n"


def test_help_names_every_bound(capsys):
    with pytest.raises(SystemExit):
        main(["recommend", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--max-kld", "--min-top1", "--max-ppl-increase", "--max-task-drop",
                                         "--min-decode-tps", "--write-sweep"))  # fmt: skip
