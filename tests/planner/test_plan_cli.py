"""`quantbench plan` through its own parser: output, model sources, and bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from quantbench.app import plan_cli
from quantbench.errors import QuantbenchError
from quantbench.planner import source
from quantbench.planner.presets import PRESETS


def plan(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="quantbench")
    plan_cli.add_parser(parser.add_subparsers(dest="command"))
    return plan_cli.run(parser.parse_args(["plan", *argv]))


def test_breakdown_and_gpu_limits(capsys):
    assert (
        plan("--model", "llama-3.1-8b", "--method", "gptq", "--bits", "4", "--context", "32768", "--gpu", "RTX 4090")
        == 0
    )
    out = capsys.readouterr().out
    assert "method    gptq 4-bit group 128, compute dtype bfloat16" in out
    assert "KV cache              4.00    4,294,967,296" in out
    assert "RTX 4090 (24 GiB = 25,769,803,776 bytes): fits" in out
    assert "largest context at batch 1: 83,522 tokens" in out
    assert "largest batch at context 32768: 2" in out


def test_fit_list_without_gpu(capsys):
    plan("--model", "mixtral-8x7b", "--method", "bnb:double_quant=true", "--context", "4096")
    out = capsys.readouterr().out
    assert "method    bnb 4-bit nf4 + double quant" in out
    # bitsandbytes converts nn.Linear layers only: Mixtral's fused experts stay in bf16 (~84 GiB).
    assert "fits on, GiB free: H100 NVL (+" in out
    assert "too small, GiB: RTX 4060 (8)," in out


def test_does_not_fit_and_warns_past_the_model_limit(capsys):
    plan("--model", "gemma-2-27b", "--context", "16384", "--gpu", "RTX 4090")
    out = capsys.readouterr().out
    assert "warning   context 16384 exceeds the model's max_position_embeddings 8192" in out
    assert "does not fit:" in out
    assert "largest context at batch 1: 0 tokens" not in out


def test_model_from_a_directory_and_from_the_hub_cache(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.json").write_text(json.dumps(PRESETS["phi-3-mini"]))
    plan("--model", str(tmp_path))
    assert "32 sliding-window layers (2047)" in capsys.readouterr().out
    monkeypatch.setattr(source, "_cached_hub_config", lambda repo: tmp_path / "config.json")
    plan("--model", "microsoft/Phi-3-mini-4k-instruct")
    assert "(Hugging Face cache)" in capsys.readouterr().out


def test_hub_id_not_cached_falls_back_to_its_preset(monkeypatch, capsys):
    monkeypatch.setattr(source, "_cached_hub_config", lambda repo: None)
    plan("--model", "meta-llama/Llama-3.1-8B-Instruct")
    assert "bundled preset llama-3.1-8b (not in the local Hugging Face cache)" in capsys.readouterr().out


def test_embedded_model_reads_the_resolved_config(tmp_path, monkeypatch, capsys):
    from quantbench import models

    (tmp_path / "config.json").write_text(json.dumps(PRESETS["smollm2-135m"]))
    monkeypatch.setattr(models, "resolve", lambda ref: type("Resolved", (), {"path": Path(tmp_path)})())
    plan("--model", "embedded:smollm2-135m", "--device", "cpu", "--dtype", "float32")
    out = capsys.readouterr().out
    assert "embedded:smollm2-135m (embedded model): 0.135 B parameters" in out
    assert "python+torch RSS" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "llama-3.1-8b", "--gpu", "RTX 9999"], "unknown GPU 'RTX 9999'; known GPUs: RTX 3060"),
        (["--model", "llama-3.1-8b", "--context", "0"], "context must be a positive integer, got 0"),
        (["--model", "llama-3.1-8b", "--batch", "-2"], "batch must be a positive integer, got -2"),
        (["--model", "llama-3.1-8b", "--prefill-chunk", "0"], "prefill_chunk must be a positive integer"),
        (["--model", "llama-3.1-8b", "--method", "awq", "--bits", "8"], "method awq: bits: Input should be 4"),
        (["--model", "llama-3.1-8b", "--method", "bnb:fast"], "expected key=value"),
        (["--model", "llama-3.1-9b"], "not a preset \\(llama-3.1-8b, "),
        (["--model", "org/not-cached"], "not a hub id whose config.json is in the local Hugging Face cache"),
    ],
)
def test_bad_input_is_one_line(argv, message, monkeypatch):
    monkeypatch.setattr(source, "_cached_hub_config", lambda repo: None)
    with pytest.raises(QuantbenchError, match=message) as err:
        plan(*argv)
    assert "\n" not in str(err.value)


def test_bad_config_file_is_reported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(QuantbenchError, match="config lacks num_hidden_layers, num_attention_heads"):
        plan("--model", str(tmp_path))


def test_cached_hub_config_reads_the_local_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert source._cached_hub_config("org/tiny") == snapshot / "config.json"
    assert source._cached_hub_config("org/other") is None


def test_model_or_calibrate_is_required():
    with pytest.raises(QuantbenchError, match="plan needs --model"):
        plan()


def test_calibrate_reads_a_store(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from quantbench.results import store

    frame = pd.DataFrame(
        [
            {
                "trial_key": "abc",
                "model_ref": "smollm2-135m",
                "method": "baseline",
                "params_json": json.dumps({"dtype": "float32"}),
                "device": "cpu",
                "status": "ok",
                "metric": "weight_bytes",
                "value": 134_515_008 * 4 * 1.02,
            }
        ]
    )
    monkeypatch.setattr(store, "read_results", lambda path: store.StoreContents(frame, ["bad.parquet: garbled"]))
    assert plan("--calibrate", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "skipped bad.parquet: garbled" in out
    assert "abc               baseline   cpu    weight_bytes" in out
    assert "-2.0%" in out
    assert "baseline   weight_bytes                  1       -2.0%         2.0%" in out


def test_calibrate_an_empty_store(tmp_path):
    with pytest.raises(QuantbenchError, match="no results in"):
        plan("--calibrate", str(tmp_path))
