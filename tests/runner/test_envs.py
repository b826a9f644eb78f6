"""Method environments: a method that declares one runs its trial worker with that environment's
interpreter; a missing environment is one line naming its create command before any trial starts;
a broken interpreter is a failed trial with its reason.

The environment here is a real venv made in a second (`--without-pip`), which sees the main
environment's packages through a .pth file instead of installing them: enough to test the plumbing
(which interpreter starts, what it imports), not pip. The method's "library" is an empty dist-info
that only this venv has. `quantbench env create` itself is exercised by the slow CLI test
(tests/app/test_env_cli.py).
"""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from env_backend import ENVIRONMENT, LIBRARY, EnvBackend

from quantbench.app.cli import main
from quantbench.errors import QuantbenchError
from quantbench.results.store import read_results
from quantbench.runner import envs
from quantbench.runner.executor import run_local
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef

HERE = Path(__file__).resolve().parent
PPL = EvalSpec("perplexity", {"seq_len": 32, "max_tokens": 64})


def make_env(root: Path, name: str = ENVIRONMENT) -> Path:
    """A finished method environment `name` under `root` with the test library installed; its path."""
    path = root / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (packages,) = path.glob("lib/python*/site-packages")
    (packages / "main-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    dist_info = packages / f"{LIBRARY.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {LIBRARY}\nVersion: 1.0\n")
    (path / envs.STAMP).write_text("{}")
    return path


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory) -> Path:
    return make_env(tmp_path_factory.mktemp("envs"))


@pytest.fixture
def env_method(monkeypatch, tmp_path):
    """Registers `envtest` (env_backend.py) for this process and its workers; returns the mark file."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("QUANTBENCH_BACKENDS", "envtest=env_backend:EnvBackend")
    mark = tmp_path / "ran-in"
    monkeypatch.setenv("QUANTBENCH_TEST_ENV_MARK", str(mark))
    return mark


def specs(model_dir, *methods):
    return [plan_trial(ModelRef(str(model_dir)), MethodSpec.parse(m), [PPL]) for m in methods]


def test_envs_live_in_the_cache_dir_unless_quantbench_envs_says(monkeypatch, tmp_path):
    monkeypatch.delenv("QUANTBENCH_ENVS", raising=False)
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    assert envs.MethodEnv("x").path == tmp_path / "cache" / "envs" / "x"
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tmp_path / "elsewhere"))
    assert envs.MethodEnv("x").python == tmp_path / "elsewhere" / "x" / "bin" / "python"


def test_llmcompressor_declares_its_environment():
    assert envs.declared_environments()["llmcompressor"] == ["llmcompressor"]


def test_a_method_whose_library_is_here_runs_here_whatever_it_declares(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tmp_path))  # empty: no environment exists
    backend = EnvBackend()
    monkeypatch.setattr(EnvBackend, "library", "torch")
    assert envs.worker_python(backend) == sys.executable
    assert envs.environment_line(backend) == "environment tinyenv: this interpreter has torch"


def test_a_method_runs_its_trial_in_its_environment(tiny_model_dir, tmp_path, tiny_env, env_method, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tiny_env.parent))
    assert envs.worker_python(EnvBackend()) == str(tiny_env / "bin" / "python")
    (outcome,) = run_local(specs(tiny_model_dir, "envtest"), tmp_path / "store")
    assert outcome.status == "ok", outcome.error
    assert Path(env_method.read_text()) == tiny_env  # quantized by the environment's interpreter
    # The row written in the environment carries the library versions there.
    versions = json.loads(read_results(tmp_path / "store").frame["versions_json"].iloc[0])
    assert versions[LIBRARY] == "1.0"


def test_a_missing_environment_stops_the_run_before_any_trial(tiny_model_dir, tmp_path, env_method, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tmp_path / "none"))
    with pytest.raises(QuantbenchError) as error:
        run_local(specs(tiny_model_dir, "baseline", "envtest"), tmp_path / "store")
    message = str(error.value)
    assert "\n" not in message and message.endswith(f"does not exist yet: quantbench env create {ENVIRONMENT}")
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").iterdir())


def test_the_cli_says_the_create_command_in_one_line(tiny_model_dir, tmp_path, env_method, monkeypatch, capsys):
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tmp_path / "none"))
    args = ["run", "--model", str(tiny_model_dir), "--method", "envtest", "--eval", "perplexity"]
    assert main([*args, "--seq-len", "32", "--max-tokens", "64", "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(f"quantbench env create {ENVIRONMENT}")


@pytest.mark.parametrize(
    ("interpreter", "reason"),
    [
        ("#!/bin/sh\necho 'ImportError: libtorch_cpu.so: cannot open shared object file' >&2\nexit 3\n",
         "worker died (exit code 3) in the 'tinyenv' environment: ImportError: libtorch_cpu.so: cannot open"),
        (None, "cannot start the worker's interpreter"),
    ],
    ids=["fails", "gone"],
)  # fmt: skip
def test_a_broken_interpreter_is_a_failed_trial_with_its_reason(
    tiny_model_dir, tmp_path, env_method, monkeypatch, interpreter, reason
):
    env = make_env(tmp_path / "envs")
    python = env / "bin" / "python"
    python.unlink()
    if interpreter is not None:
        python.write_text(interpreter)
        python.chmod(0o755)
    monkeypatch.setenv("QUANTBENCH_ENVS", str(env.parent))
    (outcome,) = run_local(specs(tiny_model_dir, "envtest"), tmp_path / "store")
    assert outcome.status == "failed" and "\n" not in outcome.error
    assert outcome.error.startswith(reason)
    frame = read_results(tmp_path / "store").frame
    assert list(frame["status"].unique()) == ["failed"]


def test_env_list_says_where_each_environment_is_whether_it_works_and_who_needs_it(
    tmp_path, tiny_env, env_method, monkeypatch, capsys
):
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tiny_env.parent))
    assert main(["env", "list"]) == 0
    out = capsys.readouterr().out
    assert str(tiny_env) in out and f"works ({LIBRARY} 1.0)" in out and "methods: envtest" in out
    assert "not created: quantbench env create llmcompressor" in out
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tmp_path / "none"))
    assert main(["env", "list"]) == 0
    assert f"not created: quantbench env create {ENVIRONMENT}" in capsys.readouterr().out


def test_methods_shows_the_environment_and_its_create_command(tmp_path, env_method, monkeypatch, capsys):
    monkeypatch.setenv("QUANTBENCH_ENVS", str(tmp_path / "none"))
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert f"environment {ENVIRONMENT}: not created yet (quantbench env create {ENVIRONMENT})" in out
    assert "environment llmcompressor: not created yet (quantbench env create llmcompressor)" in out


def test_env_create_rejects_an_environment_no_method_declares(capsys):
    assert main(["env", "create", "nosuch"]) == 2
    assert "unknown environment 'nosuch'; methods declare: llmcompressor" in capsys.readouterr().err
