"""What the robustness tests share: the real `quantbench` CLI as a subprocess, an isolated
environment for it, a snapshot of a directory tree, and synthetic result trials."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
from support import ROOT

from quantbench.results.query import query
from quantbench.results.schema import Metric, TrialHeader, trial_table
from quantbench.results.store import result_files

CLI = [sys.executable, "-m", "quantbench.app.cli"]
# Sweeps of up to 5 trials, each a worker process on the tiny model with a 64-token budget.
METHODS = ["baseline", "'baseline:dtype=bfloat16'", "'baseline:dtype=float16'", "'rtn:bits=8'", "'rtn:bits=4'"]


def sweep_file(tmp: Path, model: Path, methods: list[str], name: str = "sweep.yaml") -> Path:
    path = tmp / name
    path.write_text(
        textwrap.dedent(f"""\
            models: [{model}]
            methods: [{", ".join(methods)}]
            evals: {{perplexity: {{seq_len: 32, max_tokens: 64}}}}
            """)
    )
    return path


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The caller's environment with quantbench's cache, the default store and the Hugging Face
    home moved under `tmp`, offline, so a run can neither read nor leave anything elsewhere."""
    env = dict(os.environ)
    env.update(
        QUANTBENCH_CACHE=str(tmp / "cache"),
        QUANTBENCH_STORE=str(tmp / "default-store"),
        HF_HOME=str(tmp / "hf"),
        HF_HUB_OFFLINE="1",
        # Workers import tests/fault_backends.py when a test plugs it in, and the inherited path's checkout.
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` (hidden ones included) with its size and mtime."""
    if not root.exists():
        return {}
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def hidden_entries(root: Path) -> list[str]:
    """Hidden files or directories under `root`: writers' temporaries (`.tmp-…`), i.e. half-done work."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")) if root.exists() else []


def synthetic_trial(key: str, perplexity: float = 10.0, error: str | None = None) -> pa.Table:
    """One trial's rows as the runner writes them, without running anything."""
    header = TrialHeader(
        trial_key=key, model_ref="tiny", model_fingerprint="fp", method="baseline", method_label="baseline",
        params={"dtype": "float32"}, device="cpu", hardware="cpu", hardware_fingerprint="hw", versions={"torch": "x"},
        git_sha="", kernel="torch float32 matmul", created_at=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    )  # fmt: skip
    metrics = [] if error else [Metric("perplexity", "perplexity", perplexity, "", {"seq_len": 32}, "builtin", "h")]
    return trial_table(header, metrics, error=error)


def assert_store_is_clean(store: Path) -> None:
    """What a reader sees, even while writers work: every visible file reads (nothing skipped), each
    trial once, and every trial file that existed before the read is in it."""
    files_before = {p.stem for p in result_files(store)}
    contents = query(store)
    files_after = {p.stem for p in result_files(store)}
    assert contents.skipped == []
    keys = set() if contents.frame.empty else set(contents.frame["trial_key"])
    assert files_before <= keys <= files_after
    if not contents.frame.empty:
        assert not contents.frame[["trial_key", "eval", "metric"]].astype(str).duplicated().any()
