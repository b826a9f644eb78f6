"""Sweep files: validation before anything runs, resume, and concurrent sweeps on one store."""

import subprocess
import sys
import textwrap

import pytest
from support import ROOT

from quantbench.app.cli import main
from quantbench.errors import QuantbenchError
from quantbench.results.store import read_results
from quantbench.runner.sweep import load_sweep


def write(tmp_path, text: str, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def sweep_file(tmp_path, tiny_model_dir):
    return write(
        tmp_path,
        f"""
        models: [{tiny_model_dir}]
        methods:
          - baseline
          - name: baseline
            params: {{dtype: bfloat16}}
        evals:
          perplexity: {{seq_len: 32, max_tokens: 96}}
        """,
    )


def test_sweep_plans_the_product_of_models_methods_and_repeats(tmp_path, tiny_model_dir):
    path = write(
        tmp_path,
        f"""
        model: {tiny_model_dir}
        methods: [baseline, "baseline:dtype=float16"]
        evals: {{perplexity: {{seq_len: 16}}}}
        repeats: 2
        """,
    )
    sweep, specs = load_sweep(path)
    assert len(specs) == 4 and len({s.key for s in specs}) == 4
    assert sweep.timeout_s is None
    assert [s.repeat for s in specs] == [0, 1, 0, 1]
    assert specs[0].evals[0].params["seq_len"] == 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [m]\nmethods: [baseline\n", "line 3"),
        ("- just\n- a list\n", "expected a mapping"),
        ("models: [m]\nmethods: [baseline]\nmodelz: [x]\n", "modelz: unknown parameter"),
        ("models: [m]\nmethods: [baseline]\nrepeats: two\n", "repeats: Input should be a valid integer"),
        ("models: [m]\nmethods: []\n", "methods: List should have at least 1 item"),
        ("methods: [baseline]\n", "models: Field required"),
        ("models: [m]\nmethods: [nosuch]\n", "unknown method 'nosuch'"),
        ("models: [m]\nmethods: [{name: baseline, params: {dtype: int2}}]\n", "method 'baseline': dtype:"),
        ("models: [m]\nmethods: [baseline]\nevals: {bleu: {}}\n", "unknown eval 'bleu'"),
        ("models: [m]\nmethods: [baseline]\nevals: {perplexity: {seq_len: 0}}\n", "eval 'perplexity': seq_len"),
        ("models: [m]\nmethods: [baseline]\ndevice: tpu\n", "device: Value error, unknown device 'tpu'"),
    ],
)
def test_malformed_sweeps_name_the_key_and_the_reason(tmp_path, text, message):
    with pytest.raises(QuantbenchError, match=r"sweep\.yaml") as err:
        load_sweep(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_absent_device_fails_before_any_trial_starts(tmp_path, tiny_model_dir, capsys):
    path = write(tmp_path, f"models: [{tiny_model_dir}]\nmethods: [baseline]\ndevice: cuda\n")
    assert main(["sweep", str(path), "--store", str(tmp_path / "store")]) == 2
    assert "unavailable on cuda: no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").iterdir())


def test_a_second_run_of_a_sweep_resumes(sweep_file, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["sweep", str(sweep_file), "--store", str(store)]) == 0
    assert read_results(store).frame["trial_key"].nunique() == 2
    capsys.readouterr()
    assert main(["sweep", str(sweep_file), "--store", str(store)]) == 0
    assert capsys.readouterr().err.count("already in the store") == 2


@pytest.mark.slow
def test_two_sweeps_writing_one_store_at_once_lose_nothing(tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    evals = "evals: {perplexity: {seq_len: 32, max_tokens: 64}}"
    files = [
        write(tmp_path, f"models: [{tiny_model_dir}]\nmethods: [{m}]\n{evals}\n", f"s{i}.yaml")
        for i, m in enumerate(["baseline", "'baseline:dtype=bfloat16'"])
    ]
    procs = [
        subprocess.Popen([sys.executable, "-m", "quantbench.app.cli", "sweep", str(f), "--store", str(store)], cwd=ROOT)
        for f in files
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    contents = read_results(store)
    assert contents.skipped == []
    assert contents.frame["trial_key"].nunique() == 2
    assert not [p for p in store.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def test_the_example_sweep_is_valid():
    sweep, specs = load_sweep(ROOT / "examples" / "sweep-cpu.yaml")
    assert len(specs) >= 3 and sweep.models == ["embedded:smollm2-135m"]
