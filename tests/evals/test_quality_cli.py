"""`quantbench run --eval perplexity,divergence,tasks` end to end on the tiny model."""

from importlib.metadata import version

from support import SHARED_DATA

from quantbench.app.cli import main
from quantbench.results.store import read_results


def test_run_stores_perplexity_divergence_and_task_metrics(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    piqa = SHARED_DATA / "piqa" / "valid.jsonl"
    args = ["run", "--model", str(tiny_model_dir), "--eval", "perplexity,divergence,tasks", "--store", str(tmp_path)]
    args += ["--seq-len", "64", "--max-tokens", "200", "--top-k", "16"]
    args += ["--tasks", "piqa", "--task-data", f"piqa={piqa}", "--limit", "3", "--num-fewshot", "0"]
    assert main(args) == 0, capsys.readouterr().err
    frame = read_results(tmp_path).frame
    values = {(e, m): v for e, m, v in zip(frame["eval"], frame["metric"], frame["value"], strict=True)}
    assert values[("divergence", "kld_mean")] == 0 or abs(values[("divergence", "kld_mean")]) < 1e-6
    assert values[("divergence", "top1_agreement")] == 100.0
    assert 0 <= values[("tasks", "task:piqa:acc")] <= 1 and ("tasks", "task:piqa:acc_stderr") in values
    assert values[("tasks", "task:piqa:samples")] == 3 and ("perplexity", "perplexity") in values
    protocol = frame.loc[frame["eval"] == "divergence", "protocol_json"].iloc[0]
    assert '"top_k": 16' in protocol


def test_a_task_lm_eval_does_not_know_fails_the_run_in_one_line(tiny_model_dir, tmp_path, capsys):
    args = ["run", "--model", str(tiny_model_dir), "--eval", "tasks", "--tasks", "piqa,nosuchtask"]
    assert main([*args, "--store", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"quantbench: error: lm-eval does not know the task 'nosuchtask' (lm_eval {version('lm_eval')})"
    )
