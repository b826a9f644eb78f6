"""The dashboard and method environments: the Run tab shows where a method runs and how to create
its environment, and a run whose method has no environment stops before any trial, in one line."""

from quantbench.app.ui.run_session import RunSession
from quantbench.app.ui.run_tab import _availability_line
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef


def test_the_run_tab_shows_a_missing_environment_and_its_create_command(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tmp_path))
    line = _availability_line("llmcompressor", ["cpu"])
    assert "environment llmcompressor: not created yet (quantbench env create llmcompressor)" in line
    assert "not on cpu" not in line  # the library's absence here is not the method's verdict


def test_a_run_with_a_missing_environment_stops_before_any_trial(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tmp_path / "envs"))
    evals = [EvalSpec("perplexity", {"corpus": "builtin", "seq_len": 32, "max_tokens": 96})]
    model = ModelRef(str(tiny_model_dir))
    specs = [plan_trial(model, MethodSpec.parse(m), evals) for m in ("baseline", "llmcompressor")]
    session = RunSession(tmp_path / "store")
    session.start(specs)
    session.wait(120)
    line, table, error = session.snapshot()
    assert error.endswith("does not exist yet: quantbench env create llmcompressor") and "\n" not in error
    assert line.startswith("**Run stopped**") and table["status"].tolist() == ["not started", "not started"]
