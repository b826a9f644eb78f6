"""Runner tests: a tiny model's trials run in real worker processes."""

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture
def sleepy_backend(monkeypatch, tmp_path):
    """Registers the `sleepy` method (sleepy_backend.py) and returns the flag file that makes it hang."""
    # Keeps the inherited path: a checkout run with PYTHONPATH=$PWD has its workers import that checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("QUANTBENCH_BACKENDS", "sleepy=sleepy_backend:SleepyBackend")
    flag = tmp_path / "hang"
    monkeypatch.setenv("QUANTBENCH_TEST_HANG", str(flag))
    return flag
