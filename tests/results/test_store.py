import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quantbench.errors import QuantbenchError
from quantbench.results.schema import SCHEMA, SCHEMA_VERSION, Metric, TrialHeader, trial_table
from quantbench.results.store import check_writable, read_results, write_trial


def header(key: str = "k1", **overrides) -> TrialHeader:
    fields = dict(
        trial_key=key, model_ref="m", model_fingerprint="f", method="baseline", method_label="baseline:dtype=float32",
        params={"dtype": "float32"}, device="cpu", hardware="cpu", hardware_fingerprint="h",
        versions={"torch": "x"}, git_sha="", kernel="torch float32 matmul",
    )  # fmt: skip
    fields.update(overrides)
    return TrialHeader(**fields)


METRICS = [
    Metric("perplexity", "perplexity", 12.5, "", {"seq_len": 8}, "builtin", "abc"),
    Metric("quantize", "weight_bytes", 1024, "bytes"),
]


def test_round_trip_through_duckdb(tmp_path):
    path = write_trial(tmp_path, "k1", trial_table(header(), METRICS))
    assert path.name == "k1.parquet"
    frame = read_results(tmp_path).frame
    assert list(frame["metric"]) == ["perplexity", "weight_bytes"]
    assert frame.loc[0, "value"] == 12.5
    assert frame.loc[0, "corpus_hash"] == "abc"
    assert frame.loc[0, "schema_version"] == SCHEMA_VERSION
    assert (frame["kernel"] == "torch float32 matmul").all()
    assert [p.name for p in tmp_path.iterdir()] == ["k1.parquet"]  # no temporary left behind


def test_failed_trial_is_one_row_with_its_error(tmp_path):
    write_trial(tmp_path, "k2", trial_table(header("k2"), [], error="RuntimeError: boom"))
    frame = read_results(tmp_path).frame
    assert len(frame) == 1
    assert frame.loc[0, "status"] == "failed"
    assert frame.loc[0, "error"] == "RuntimeError: boom"


def test_rewriting_a_trial_replaces_it(tmp_path):
    write_trial(tmp_path, "k1", trial_table(header(), [], error="first try failed"))
    write_trial(tmp_path, "k1", trial_table(header(), METRICS))
    assert set(read_results(tmp_path).frame["status"]) == {"ok"}


def test_corrupt_and_foreign_files_are_skipped_and_reported(tmp_path):
    write_trial(tmp_path, "good", trial_table(header("good"), METRICS))
    (tmp_path / "truncated.parquet").write_bytes((tmp_path / "good.parquet").read_bytes()[:200])
    pq.write_table(pa.table({"a": [1]}), tmp_path / "foreign.parquet")
    (tmp_path / ".tmp-inflight.parquet").write_bytes(b"partial")  # a writer still at work
    contents = read_results(tmp_path)
    assert set(contents.frame["trial_key"]) == {"good"}
    assert sorted(s.split(":")[0] for s in contents.skipped) == ["foreign.parquet", "truncated.parquet"]
    assert any("missing columns" in s for s in contents.skipped)


def test_damaged_pages_with_an_intact_footer_are_skipped(tmp_path):
    write_trial(tmp_path, "good", trial_table(header("good"), METRICS))
    path = write_trial(tmp_path, "bad", trial_table(header("bad"), METRICS))
    data = bytearray(path.read_bytes())
    data[4:60] = b"\xff" * 56  # first column chunk garbled, footer untouched
    path.write_bytes(bytes(data))
    contents = read_results(tmp_path)
    assert set(contents.frame["trial_key"]) == {"good"}
    assert contents.skipped and contents.skipped[0].startswith("bad.parquet")


def test_files_of_an_older_schema_still_read(tmp_path):
    old = trial_table(header("old"), METRICS).drop_columns(["kernel", "hardware_fingerprint"])
    old = old.set_column(0, "schema_version", pa.array([0, 0], pa.int32()))
    pq.write_table(old, tmp_path / "old.parquet")
    write_trial(tmp_path, "new", trial_table(header("new"), METRICS))
    frame = read_results(tmp_path).frame
    assert set(frame["trial_key"]) == {"new", "old"}
    assert frame.loc[frame["trial_key"] == "old", "kernel"].isna().all()


def test_empty_or_missing_store_reads_as_empty(tmp_path):
    assert read_results(tmp_path / "nothing").frame.empty
    assert read_results(tmp_path).frame.empty


def test_unwritable_store_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(QuantbenchError, match="is not writable") as err:
        check_writable(blocker / "store")
    assert "\n" not in str(err.value)


def test_schema_matches_rows():
    table = trial_table(header(created_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)), METRICS)
    assert table.schema == SCHEMA


def test_a_version_2_file_without_series_reads_beside_one_with_series(tmp_path):
    old = trial_table(header("old"), [Metric("perplexity", "window_nll_sum", 3.0)])
    old = old.drop_columns(["series"]).set_column(0, "schema_version", pa.array([2], pa.int32()))
    pq.write_table(old, tmp_path / "old.parquet")
    new = trial_table(header("new"), [Metric("perplexity", "window_nll_sum", 3.0, series=(1.0, 2.0))])
    write_trial(tmp_path, "new", new)
    frame = read_results(tmp_path).frame.set_index("trial_key")
    assert frame.loc["old", "series"] is None and list(frame.loc["new", "series"]) == [1.0, 2.0]
