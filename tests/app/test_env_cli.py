"""llm-compressor trials typed in the main environment and run in its own (both schemes, a tiny model;
the embedded model's rows come from bench/quality.py: GPTQ over its 30 layers costs minutes, not a test's budget).

The llmcompressor environment is built once per machine (`quantbench env create llmcompressor`,
about 1.5 min with pip's cache warm) in quantbench's cache directory, where later runs, and CI's on
the same machine, find it; this test builds it when it is missing.
"""

import json
import os
import subprocess
import sys

import pytest

from quantbench.results.store import read_results
from quantbench.runner.envs import MethodEnv

CREATE_TIMEOUT_S = 1800  # a cold pip cache downloads torch's dependencies, transformers and llm-compressor


@pytest.fixture(scope="module")
def llmcompressor_env() -> MethodEnv:
    env = MethodEnv("llmcompressor")
    if not env.exists:
        cli = [sys.executable, "-m", "quantbench.app.cli", "env", "create", env.name]
        subprocess.run(cli, check=True, timeout=CREATE_TIMEOUT_S)
    return env


def run_cli(model: str, methods: list[str], store, seq_len: int, max_tokens: int) -> subprocess.CompletedProcess:
    cli = [sys.executable, "-m", "quantbench.app.cli", "run", "--model", model, "--eval", "perplexity"]
    cli += [arg for method in methods for arg in ("--method", method)]
    cli += ["--seq-len", str(seq_len), "--max-tokens", str(max_tokens), "--store", str(store)]
    return subprocess.run(cli, capture_output=True, text=True, timeout=1800, env=dict(os.environ))


def check_ran_in_the_environment(frame) -> None:
    assert set(frame["status"]) == {"ok"} and set(frame["method"]) == {"llmcompressor"}
    # Written by the worker in the environment: its own transformers and llm-compressor, not ours.
    for text in frame["versions_json"].unique():
        versions = json.loads(text)
        assert versions["llmcompressor"] == "0.14.0.1" and versions["transformers"].startswith("5.17")


@pytest.mark.slow
def test_both_schemes_quantize_a_tiny_model_in_the_environment(llmcompressor_env, tiny_model_dir, tmp_path):
    methods = ["llmcompressor:n_samples=2,seq_len=32", "llmcompressor:scheme=W4A16,n_samples=2,seq_len=32"]
    done = run_cli(str(tiny_model_dir), methods, tmp_path, seq_len=32, max_tokens=128)
    assert done.returncode == 0, done.stderr[-2000:]
    frame = read_results(tmp_path).frame
    check_ran_in_the_environment(frame)
    kernels = dict(zip(frame["method_label"], frame["kernel"], strict=False))
    assert kernels == {
        "llmcompressor:n_samples=2,scheme=W8A8,seq_len=32": "compressed-tensors int-quantized",
        "llmcompressor:n_samples=2,scheme=W4A16,seq_len=32": "compressed-tensors pack-quantized",
    }
    bits = frame[frame["metric"] == "bits_per_weight"].set_index("method_label")["value"]
    # Embeddings and lm_head (half of this tiny model's weights) stay float32; the linears are packed.
    assert bits.max() < 24 and bits["llmcompressor:n_samples=2,scheme=W4A16,seq_len=32"] < bits.max()
