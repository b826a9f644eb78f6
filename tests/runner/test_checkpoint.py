"""Checkpoint bytes on disk (`memory` eval): measured when the model saves as itself, otherwise no
value and the reason in the row's note (results schema 2)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quantbench.results.schema import SCHEMA_VERSION, Metric, TrialHeader, trial_table
from quantbench.results.store import read_results
from quantbench.runner.trial import execute, plan_trial, prepare_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef


def checkpoint_row(model_dir, store, method):
    spec = plan_trial(ModelRef(str(model_dir)), MethodSpec.parse(method), [EvalSpec("memory", {"checkpoint": True})])
    outcome = execute(prepare_trial(spec, store), store)
    assert outcome.status == "ok", outcome.error
    frame = read_results(store).frame
    frame = frame[frame["trial_key"] == spec.key].set_index("metric")
    return frame.loc["checkpoint_bytes"], frame.loc["weight_bytes", "value"]


def test_baseline_and_bnb_checkpoints_are_counted(tiny_model_dir, tmp_path):
    base, base_weights = checkpoint_row(tiny_model_dir, tmp_path, "baseline")
    bnb, bnb_weights = checkpoint_row(tiny_model_dir, tmp_path, "bnb:bits=8")
    # safetensors adds a JSON header (tensor names, shapes, offsets) and bnb a little quant state;
    # config.json and generation_config.json are a few KiB.
    assert base_weights < base["value"] < base_weights + 64 * 1024
    assert bnb_weights < bnb["value"] < bnb_weights + 64 * 1024
    assert bnb["value"] < 0.5 * base["value"]  # int8 linears instead of fp32
    assert base["unit"] == "bytes" and base["note"] == "" and base["eval"] == "memory"


@pytest.mark.parametrize(
    "method", ["quanto:weights=int8", "rtn", "hqq", "torchao:activations=int8,smoothquant=true,n_samples=2,seq_len=16"]
)
def test_methods_that_cannot_save_record_no_value_and_the_reason(tiny_model_dir, tmp_path, method):
    """The runner asks the method's `saves(params)` (tests/backends/test_serialization.py checks it)."""
    row, _ = checkpoint_row(tiny_model_dir, tmp_path, method)
    assert pd_isna(row["value"])
    name = method.partition(":")[0]
    assert row["note"] == f"{name} cannot write its quantized model to disk as itself (not serializable)"


def pd_isna(value) -> bool:
    return value is None or value != value


def test_version_1_files_without_a_note_column_still_read(tmp_path):
    header = TrialHeader("old", "m", "fp", "baseline", "baseline", {}, "cpu", "hw", "hwfp", {}, "sha")
    table = trial_table(header, [Metric("perplexity", "perplexity", 12.5)])
    table = table.drop_columns(["note"]).set_column(0, "schema_version", pa.array([1], pa.int32()))
    pq.write_table(table, tmp_path / "old.parquet")
    new = trial_table(TrialHeader("new", *list(header.__dict__.values())[1:]), [Metric("memory", "x", 1.0, note="n")])
    pq.write_table(new, tmp_path / "new.parquet")
    frame = read_results(tmp_path).frame.set_index("trial_key")
    assert frame.loc["old", "value"] == 12.5 and pd_isna(frame.loc["old", "note"])
    assert frame.loc["new", "note"] == "n" and frame.loc["new", "schema_version"] == SCHEMA_VERSION
