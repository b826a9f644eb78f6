"""The real embedded model (SmolLM2-135M-Instruct, GGUF in a PyPI package), small token budgets."""

import math
import os

import pytest
from support import WIKITEXT_TEST

from quantbench import models
from quantbench.app.cli import main
from quantbench.results.store import read_results
from quantbench.spec import ModelRef

pytestmark = pytest.mark.slow


def test_embedded_model_is_dequantized_once_and_reused():
    first = models.resolve(ModelRef("embedded:smollm2-135m"))
    stamp = os.stat(first.path / "model.safetensors").st_mtime_ns
    second = models.resolve(ModelRef("embedded:smollm2-135m"))
    assert second.path == first.path and second.fingerprint == first.fingerprint
    assert os.stat(second.path / "model.safetensors").st_mtime_ns == stamp
    config = (first.path / "config.json").read_text()
    assert '"num_hidden_layers": 30' in config and "quantization_config" not in config


def test_cli_run_on_the_embedded_model_stores_a_finite_perplexity(tmp_path, capsys):
    args = ["run", "--model", "embedded:smollm2-135m", "--corpus", str(WIKITEXT_TEST)]
    args += ["--seq-len", "256", "--max-tokens", "1024", "--store", str(tmp_path)]
    assert main(args) == 0
    frame = read_results(tmp_path).frame
    values = dict(zip(frame["metric"], frame["value"], strict=True))
    # SmolLM2-135M scores roughly 20-30 on WikiText-2 at short context; a broken load gives thousands.
    assert math.isfinite(values["perplexity"]) and 5 < values["perplexity"] < 60
    assert 0.5 < values["bits_per_byte"] < 1.5
    assert values["tokens_scored"] == 4 * 255
    assert frame["model_fingerprint"][0] == models.file_sha256(models._embedded_gguf("smollm2-135m"))
    capsys.readouterr()
    assert main(["results", "--store", str(tmp_path)]) == 0
    assert "embedded:smollm2-135m" in capsys.readouterr().out


def test_real_trials_compare_and_export(tmp_path, capsys):
    """Two real trials of the embedded model through compare and every text export."""
    import pandas as pd

    from quantbench.results.export import export

    store = tmp_path / "store"
    args = ["run", "--model", "embedded:smollm2-135m", "--corpus", str(WIKITEXT_TEST), "--seq-len", "128"]
    args += ["--max-tokens", "256", "--store", str(store), "--method", "baseline", "--method", "rtn:bits=4"]
    assert main(args) == 0
    frame = read_results(store).frame
    keys = list(frame.drop_duplicates("trial_key")["trial_key"])
    capsys.readouterr()
    assert main(["compare", *keys, "--store", str(store)]) == 0
    assert "rtn" in capsys.readouterr().out
    for fmt, name in [("csv", "t.csv"), ("json", "t.json"), ("md", "t.md"), ("latex", "t.tex"), ("html", "t.html")]:
        path = export(frame, fmt, tmp_path, name)
        text = path.read_text()
        assert "rtn" in text, fmt
    assert len(pd.read_csv(tmp_path / "t.csv")) == 2
    assert '<script src="http' not in (tmp_path / "t.html").read_text()
