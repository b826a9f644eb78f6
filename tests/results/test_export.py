import json
import re

import numpy as np
import pandas as pd
import pytest

from quantbench.errors import QuantbenchError
from quantbench.results import export as export_module
from quantbench.results.export import confine, export
from quantbench.results.query import wide
from quantbench.results.store import read_results


@pytest.fixture
def frame(mixed_store):
    return read_results(mixed_store).frame


def _reread(fmt: str, path) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, parse_dates=["created_at"])
    if fmt == "parquet":
        return pd.read_parquet(path)
    table = pd.DataFrame(json.loads(path.read_text()))
    return table.assign(created_at=pd.to_datetime(table["created_at"]))


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_data_formats_read_back_equal(frame, tmp_path, fmt):
    path = export(frame, fmt, tmp_path, f"out/trials.{fmt}")
    assert path == tmp_path / "out" / f"trials.{fmt}"
    expected = wide(frame)
    if fmt == "csv":  # CSV cannot tell an empty string from a missing value
        expected = expected.replace("", np.nan)
    pd.testing.assert_frame_equal(_reread(fmt, path), expected, check_dtype=False, check_column_type=False)
    assert not list(path.parent.glob(".*"))  # no temporary left behind


def test_markdown_bolds_the_best_value_per_column(frame, tmp_path):
    lines = export(frame, "md", tmp_path, "t.md").read_text().splitlines()
    assert len(lines) == 2 + 5
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["trial_key", "status", "model", "method", "device"]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in lines[2:]}
    assert rows["base"][header.index("ppl")] == "**10.000**"
    assert rows["hqq2"][header.index("weights MiB")] == "**0.6**"
    assert (
        rows["bnb4"][header.index("top-1 agree %")] == "90.00"
        and rows["base"][header.index("top-1 agree %")] == "**100.00**"
    )


def test_latex_is_a_balanced_booktabs_tabular(frame, tmp_path):
    text = export(frame, "latex", tmp_path, "t.tex").read_text()
    lines = text.splitlines()
    assert lines[0].startswith(r"\begin{tabular}{lllll") and lines[-1] == r"\end{tabular}"
    assert [ln for ln in lines if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule", r"\midrule", r"\bottomrule"
    ]  # fmt: skip
    columns = len(re.search(r"\{(l+r+)\}", lines[0]).group(1))
    body = [ln for ln in lines if ln.endswith(r"\\")]
    assert len(body) == 1 + 5 and all(ln.count(" & ") == columns - 1 for ln in body)
    assert text.count("{") == text.count("}")
    assert r"\textbf{10.000}" in text
    assert r"trial\_key" in text and "baseline:dtype=float32" in text


def test_latex_escapes_specials():
    assert export_module.latex_escape("a_b & 50% #1 {x} ~^\\") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\^{}\textbackslash{}"
    )


def test_html_report_holds_the_data_and_opens_offline(frame, tmp_path):
    text = export(frame, "html", tmp_path, "report.html").read_text()
    for key in ["base", "bnb4", "hqq2", "broke", "wiki", "bnb:bits=4,quant_type=nf4"]:
        assert key in text
    assert "<b>10.000</b>" in text
    assert not re.search(r"<script[^>]*\bsrc=", text)  # every script inline, plotly.js included
    assert (
        text.count('class="plotly-graph-div"') == 4
    )  # no trial measured prefill: no empty chart and len(text) > 1_000_000


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../escape.csv", "must not contain '..'"),
        ("sub/../../escape.csv", "must not contain '..'"),
        ("/etc/escape.csv", "is outside the export directory"),
        (".", "is outside the export directory"),
    ],
)
def test_export_paths_are_confined(frame, tmp_path, name, message):
    with pytest.raises(QuantbenchError, match=re.escape(message)) as err:
        export(frame, "csv", tmp_path / "exports", name)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "escape.csv").exists()


def test_a_symlink_out_of_the_directory_is_refused(tmp_path):
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "link").symlink_to(tmp_path)
    with pytest.raises(QuantbenchError, match="outside the export directory"):
        confine(tmp_path / "exports", "link/x.csv")


def test_an_absolute_path_inside_the_directory_is_fine(tmp_path):
    assert confine(tmp_path, tmp_path / "a" / "b.csv") == (tmp_path / "a" / "b.csv").resolve()


@pytest.mark.parametrize(
    ("fmt", "chart", "message"),
    [
        ("docx", "pareto", "unknown export format 'docx'; valid formats: md, csv, parquet, latex, json, html, png"),
        ("png", "pie", "unknown chart 'pie'; valid charts: pareto, footprint, bits, throughput, prefill, memory"),
    ],
)
def test_unknown_format_or_chart(frame, tmp_path, fmt, chart, message):
    with pytest.raises(QuantbenchError, match=re.escape(message)):
        export(frame, fmt, tmp_path, "x", chart=chart)


def test_png_without_a_browser_says_so(frame, tmp_path, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(export_module.shutil, "which", lambda name: None)
    with pytest.raises(QuantbenchError, match="PNG export needs a Chromium or Chrome browser"):
        export(frame, "png", tmp_path, "chart.png")


@pytest.mark.slow
def test_png_through_kaleido_and_chromium(frame, tmp_path):
    pytest.importorskip("kaleido")
    if not any(export_module.shutil.which(b) for b in export_module.BROWSERS):
        pytest.skip("no Chromium or Chrome browser on this machine")
    path = export(frame, "png", tmp_path, "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
