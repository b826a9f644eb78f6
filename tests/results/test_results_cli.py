"""`quantbench results|compare|export` as a user types them."""

import json

import pytest

from quantbench.app.cli import main


def test_results_filters(mixed_store, capsys):
    assert main(["results", "--store", str(mixed_store), "--bits", "4"]) == 0
    out = capsys.readouterr().out
    assert "bnb4" in out and "hqq2" not in out and "ppl" in out
    assert main(["results", "--store", str(mixed_store), "--since", "2026-11-04", "--until", "2026-11-04"]) == 0
    out = capsys.readouterr().out
    assert "broke" in out and "broke failed: RuntimeError: out of memory" in out and "wiki" not in out
    assert main(["results", "--store", str(mixed_store), "--device", "cuda"]) == 0
    assert capsys.readouterr().out.startswith(f"no trials in {mixed_store} match")


def test_a_corrupt_file_is_skipped_with_a_warning_naming_it(mixed_store, capsys):
    (mixed_store / "garbled.parquet").write_bytes(b"PAR1 not really")
    assert main(["results", "--store", str(mixed_store)]) == 0
    captured = capsys.readouterr()
    assert "warning: skipped garbled.parquet: not a readable Parquet file" in captured.err
    assert "bnb4" in captured.out


def test_compare_prints_deltas(mixed_store, capsys):
    assert main(["compare", "bnb", "hqq", "--store", str(mixed_store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reference: base\n")
    assert "Δ% perplexity" in out and "+10.00%" in out and "4.00×" in out


def test_compare_without_keys_shows_the_newest_models_trials_against_its_baseline(mixed_store, capsys):
    assert main(["compare", "--store", str(mixed_store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reference: base\n")
    header = out.splitlines()[1]
    assert "bnb4 bnb:bits=4" in header and "hqq2 hqq:nbits=2" in header and "wiki" not in header


def test_compare_without_keys_on_a_store_without_a_baseline_is_one_line(tmp_path, capsys):
    assert main(["compare", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"quantbench: error: no ok trial in {tmp_path} has a comparable baseline: name the trials " \
        "(`quantbench results` lists them)"  # fmt: skip


def test_export_writes_inside_dir(mixed_store, tmp_path, capsys):
    out_dir = tmp_path / "exports"
    args = ["export", "--format", "json", "--out", "ok.json", "--dir", str(out_dir), "--store", str(mixed_store)]
    assert main([*args, "--status", "ok"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out_dir / 'ok.json'} (4 trials)")
    assert {r["trial_key"] for r in json.loads((out_dir / "ok.json").read_text())} == {"base", "bnb4", "hqq2", "wiki"}
    assert main([*args, "--method", "awq"]) == 1
    assert "no trials in" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--format", "csv", "--out", "../x.csv"], "export path '../x.csv' must not contain '..'"),
        (["export", "--format", "csv", "--out", "/x.csv"], "export path '/x.csv' is outside the export directory"),
        (["export", "--format", "csv", "--out", "x.csv", "--since", "last week"], "--since 'last week' is not a date"),
        (["results", "--since", "2026-11-05", "--until", "2026-11-01"], "is not before --until"),
        (["compare", "nope"], "no trial 'nope' in the store"),
        (["compare", "wiki"], "no comparable baseline trial of tiny in the store"),
        (["compare", "wiki", "--reference", "base"], "corpus_hash of perplexity differs"),
    ],
)
def test_bad_input_is_one_line_exit_2(mixed_store, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--store", str(mixed_store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("quantbench: error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.slow  # two trials, each in its own worker process: a minute and more on 2 cores
def test_real_trials_of_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    store = tmp_path / "store"
    run = ["run", "--model", str(tiny_model_dir), "--seq-len", "32", "--max-tokens", "128", "--store", str(store)]
    assert main([*run, "--method", "baseline", "--method", "baseline:dtype=bfloat16"]) == 0
    capsys.readouterr()
    assert main(["results", "--store", str(store), "--bits", "16"]) == 0
    out = capsys.readouterr().out
    assert "baseline:dtype=bfloat16" in out and "baseline:dtype=float32" not in out
    key = out.splitlines()[1].split()[0]
    assert main(["compare", key, "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "memory saved ×" in out and "2.00×" in out  # bf16 weights are half of float32's
    html = ["export", "--format", "html", "--out", "r.html", "--dir", str(tmp_path), "--store", str(store)]
    assert main(html) == 0
    assert key in (tmp_path / "r.html").read_text()
