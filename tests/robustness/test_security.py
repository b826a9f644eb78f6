"""Security properties of the code itself: no model code runs unless asked, weights are never
unpickled, no user string reaches a shell, store and export paths stay where they belong, and
the dashboard does not listen beyond this machine unless told.

The source checks walk the AST of every module under quantbench/ (and bench/); each checker is
also run on a snippet that breaks its rule, so a checker that stopped finding anything fails.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_runs import synthetic_trial
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT

from quantbench import models
from quantbench.errors import QuantbenchError
from quantbench.results.store import read_results, write_trial
from quantbench.spec import DEFAULT_MODEL, MethodSpec, ModelRef, TrialSpec

SOURCES = sorted([*(ROOT / "quantbench").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])


def dotted(node: ast.AST) -> str:
    """`torch.load` for the expression torch.load, '' for anything that is not a plain name chain."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


UNPICKLERS = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_loading(tree: ast.AST) -> list[str]:
    """torch.load without weights_only=True, any unpickling module, numpy's allow_pickle, yaml.load."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            problems += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in UNPICKLERS]
    for call in calls(tree):
        name = dotted(call.func)
        if name.endswith("torch.load") and not is_true(keyword(call, "weights_only")):
            problems.append(f"line {call.lineno}: torch.load without weights_only=True")
        if name in ("np.load", "numpy.load") and is_true(keyword(call, "allow_pickle")):
            problems.append(f"line {call.lineno}: numpy.load(allow_pickle=True)")
        if name in ("yaml.load", "yaml.unsafe_load"):
            problems.append(f"line {call.lineno}: {name} (use yaml.safe_load)")
    return problems


SHELLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "pty.spawn"}
SUBPROCESS = {f"subprocess.{f}" for f in ("run", "Popen", "call", "check_call", "check_output")}


def shell_uses(tree: ast.AST) -> list[str]:
    """shell=True anywhere, the shell-running helpers, a command given as one string, eval/exec."""
    problems = []
    for call in calls(tree):
        name = dotted(call.func)
        shell = keyword(call, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            problems.append(f"line {call.lineno}: shell={ast.unparse(shell)}")
        if name in SHELLS:
            problems.append(f"line {call.lineno}: {name}")
        if name in SUBPROCESS and call.args and isinstance(call.args[0], ast.Constant | ast.JoinedStr | ast.BinOp):
            problems.append(f"line {call.lineno}: {name} with a command string")
        if name in ("eval", "exec"):
            problems.append(f"line {call.lineno}: {name}()")
    return problems


def remote_code(tree: ast.AST) -> list[str]:
    """trust_remote_code given a literal True anywhere in its value: it must come from the user
    (a ModelRef, a sweep file, a CLI flag or UI checkbox that default to False)."""
    problems = []
    for call in calls(tree):
        value = keyword(call, "trust_remote_code")
        if value is not None and any(is_true(node) for node in ast.walk(value)):
            problems.append(f"line {call.lineno}: trust_remote_code={ast.unparse(value)}")
    return problems


CHECKERS: dict[str, tuple[Callable[[ast.AST], list[str]], str, str]] = {
    # name: (checker, a snippet it must flag, a snippet it must pass)
    "weights": (unsafe_loading, "import torch\ntorch.load(path)\n", "torch.load(path, weights_only=True)\n"),
    "pickle": (unsafe_loading, "import pickle\npickle.load(f)\n", "json.load(f)\n"),
    "yaml": (unsafe_loading, "yaml.load(text, Loader=yaml.Loader)\n", "yaml.safe_load(text)\n"),
    "shell": (shell_uses, "subprocess.run(cmd, shell=True)\n", "subprocess.run([sys.executable, '-V'])\n"),
    "system": (shell_uses, "os.system('ls ' + user)\n", "os.listdir(user)\n"),
    "string": (shell_uses, "subprocess.run(f'git {user}')\n", "subprocess.run(['git', user])\n"),
    "eval": (shell_uses, "eval(user)\n", "get_eval(user)\n"),
    "trust": (remote_code, "AutoConfig.from_pretrained(p, trust_remote_code=flag or True)\n",
              "AutoConfig.from_pretrained(p, trust_remote_code=ref.trust_remote_code)\n"),
}  # fmt: skip


@pytest.mark.parametrize("rule", sorted(CHECKERS))
def test_each_checker_flags_what_it_forbids(rule):
    checker, bad, good = CHECKERS[rule]
    assert checker(ast.parse(bad)), f"{rule}: the checker missed {bad!r}"
    assert checker(ast.parse(good)) == [], f"{rule}: the checker flagged {good!r}"


@pytest.mark.parametrize("checker", [unsafe_loading, shell_uses, remote_code], ids=lambda c: c.__name__)
def test_source_breaks_no_rule(checker):
    assert len(SOURCES) > 50  # the walk found the package
    problems = [f"{path.relative_to(ROOT)} {p}" for path in SOURCES for p in checker(ast.parse(path.read_text()))]
    assert problems == []


# --- trust_remote_code, behaviourally --------------------------------------------------------

EVIL_CONFIG = """import os, pathlib
pathlib.Path(os.environ["QB_MARKER"]).write_text("the model's own code ran")
from transformers import LlamaConfig


class EvilConfig(LlamaConfig):
    model_type = "llama"
"""
EVIL_MODEL = """from transformers import LlamaForCausalLM
from .configuration_evil import EvilConfig


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture
def model_with_code(tiny_model_dir, tmp_path, monkeypatch) -> Path:
    """The tiny model plus Python files its config asks transformers to run (auto_map); running
    them leaves a marker file."""
    import shutil

    path = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (path / "configuration_evil.py").write_text(EVIL_CONFIG)
    (path / "modeling_evil.py").write_text(EVIL_MODEL)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("QB_MARKER", str(tmp_path / "marker"))
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    return path


def test_defaults_never_trust_remote_code():
    from quantbench.app.cli import build_parser
    from quantbench.runner.sweep import SweepFile

    assert ModelRef().trust_remote_code is False and ModelRef("x").trust_remote_code is False
    assert build_parser().parse_args(["run"]).trust_remote_code is False
    assert SweepFile(models=["m"], methods=["baseline"]).trust_remote_code is False
    spec = TrialSpec.from_dict({"model": {"ref": DEFAULT_MODEL}, "method": {"name": "baseline", "params": {}},
                                "evals": [], "device": "cpu"})  # fmt: skip
    assert spec.model.trust_remote_code is False


def test_a_models_own_code_does_not_run_unless_asked(model_with_code, tmp_path):
    from quantbench.backends.base import meta_model

    resolved = models.resolve(ModelRef(str(model_with_code)))
    models.load(resolved)
    models.load_tokenizer(resolved)
    meta_model(resolved)
    assert not (tmp_path / "marker").exists()

    # The control: asked to trust it, transformers does run that code (so the marker can appear).
    script = (
        "from quantbench import models; from quantbench.spec import ModelRef; import sys; "
        "models.load(models.resolve(ModelRef(sys.argv[1], trust_remote_code=True)))"
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))  # transformers copies the code under HF_HOME
    done = subprocess.run([sys.executable, "-c", script, str(model_with_code)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "marker").read_text() == "the model's own code ran"


# --- store and export paths ------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(ref=st.text(max_size=30), method=st.text(min_size=1, max_size=12), device=st.text(max_size=6))
def test_trial_keys_are_plain_file_names(ref, method, device):
    """A trial's file name comes from its key, a hash: no model reference or method name, however
    strange ("../../etc", "a/b"), decides where in the file system a result lands."""
    key = TrialSpec(ModelRef(ref), MethodSpec(method), (), device).key
    assert len(key) == 16 and set(key) <= set("0123456789abcdef")


@pytest.mark.parametrize("key", ["../escape", "sub/dir", "/abs", "", ".hidden", "a\x00b"])
def test_the_store_writes_no_file_outside_itself(tmp_path, key):
    store = tmp_path / "store"
    with pytest.raises(QuantbenchError, match="trial key"):
        write_trial(store, key, synthetic_trial("k"))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_the_store_reads_only_its_own_files(tmp_path):
    """Readers look at `<store>/*.parquet` only: a result file in a sibling or sub-directory, or one
    reached through a symlinked directory, is not read."""
    store = tmp_path / "store"
    write_trial(store, "inside", synthetic_trial("inside"))
    (tmp_path / "outside").mkdir()
    pq.write_table(synthetic_trial("outside"), tmp_path / "outside" / "outside.parquet")
    (store / "sub").mkdir()
    pq.write_table(synthetic_trial("nested"), store / "sub" / "nested.parquet")
    (store / "link").symlink_to(tmp_path / "outside")
    assert set(read_results(store).frame["trial_key"]) == {"inside"}


# --- the dashboard ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7"])
def test_serve_refuses_a_public_address_without_public(tmp_path, host):
    pytest.importorskip("gradio")
    from quantbench.app.ui import serve

    with pytest.raises(QuantbenchError, match=f"refusing to listen on {host}"):
        serve(tmp_path, host=host, port=1)  # port 1 would fail to bind: the refusal must come first
