"""Paired comparisons from per-window sums: calibrated on seeded random data, able to see a real
difference, carried through the store (schema 3 `series`) into Compare, and absent, not broken,
for a store written before the series existed."""

from pathlib import Path

import numpy as np
import pytest
from rows import PROTOCOL, T0

from quantbench.errors import QuantbenchError
from quantbench.results.columns import display_table
from quantbench.results.compare import (
    WindowSums,
    compare,
    paired_difference,
    paired_metric,
    paired_name,
    window_sums,
)
from quantbench.results.query import wide
from quantbench.results.schema import Metric, TrialHeader, trial_table
from quantbench.results.store import read_results, write_trial

STORE_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1"
WINDOWS, TOKENS = 12, 63


def _model_sums(rng: np.random.Generator, text: np.ndarray, shift: float = 0.0) -> WindowSums:
    """Per-window NLL sums of one model: the text's difficulty per token (shared by every model
    scored on it) plus this model's own window-level and token-level noise."""
    own = rng.normal(0, 0.05, (WINDOWS, 1)) + rng.normal(0, 0.5, (WINDOWS, TOKENS))
    return WindowSums((text + own + shift).sum(axis=1), np.full(WINDOWS, TOKENS))


def _text(rng: np.random.Generator) -> np.ndarray:
    return rng.gamma(2.0, 1.5, (WINDOWS, TOKENS))


SPLITS = 2000


def test_two_equally_good_models_are_within_noise_at_the_nominal_rate():
    """Identical in distribution, scored on the same seeded text: the 95% test must call them
    different in about 5% of splits. Allowed: 5% ± 3 binomial standard errors of 2000 splits
    (3.5% to 6.5%), so an over-eager test (e.g. treating tokens as independent) fails, and so
    does one that never fires."""
    significant = 0
    for seed in range(SPLITS):
        rng = np.random.default_rng(seed)
        text = _text(rng)
        significant += paired_difference(_model_sums(rng, text), _model_sums(rng, text)).significant
    rate = significant / SPLITS
    band = 3 * (0.05 * 0.95 / SPLITS) ** 0.5
    assert 0.05 - band <= rate <= 0.05 + band, rate


def test_a_real_difference_is_found_and_its_size_estimated():
    rng = np.random.default_rng(7)
    text = _text(rng)
    diff = paired_difference(_model_sums(rng, text, shift=0.2), _model_sums(rng, text))
    assert diff.significant
    assert diff.mean_diff == pytest.approx(0.2, abs=3 * diff.stderr)


def test_a_model_against_itself_is_within_noise():
    rng = np.random.default_rng(1)
    sums = _model_sums(rng, _text(rng))
    assert paired_difference(sums, sums) == (0.0, 0.0, False, 0.0)


def test_different_windows_are_refused():
    a = WindowSums(np.ones(4), np.full(4, 63))
    b = WindowSums(np.ones(4), np.array([63, 63, 63, 31]))
    with pytest.raises(QuantbenchError, match="paired comparison needs the same windows: 4 vs 4 windows of 252 vs 220"):
        paired_difference(a, b)


def test_one_window_is_untested_not_significant():
    diff = paired_difference(WindowSums(np.array([9.0]), np.array([63])), WindowSums(np.array([3.0]), np.array([63])))
    assert np.isnan(diff.stderr) and not diff.significant


def _trial(key: str, method: str, nll_sums: np.ndarray, day: int) -> object:
    header = TrialHeader(
        trial_key=key, model_ref="tiny", model_fingerprint="fp-tiny", method=method, method_label=method,
        params={}, device="cpu", hardware="cpu: test", hardware_fingerprint="hw", versions={}, git_sha="abc",
        created_at=T0.replace(day=1 + day),
    )  # fmt: skip
    n = WINDOWS * TOKENS
    nll = float(nll_sums.sum()) / n
    tags = {"protocol": PROTOCOL, "corpus": "builtin", "corpus_hash": "hash-builtin"}
    metrics = [
        Metric("quantize", "weight_bytes", 1000.0 / (1 + day), "bytes"),
        Metric("perplexity", "perplexity", float(np.exp(nll)), "", **tags),
        Metric("perplexity", "perplexity_stderr", 0.5, "", **tags),
        Metric("perplexity", "window_nll_sum", float(nll_sums.sum()), "nats", **tags, series=tuple(nll_sums)),
        Metric("perplexity", "window_tokens", n, "tokens", **tags, series=(TOKENS,) * WINDOWS),
    ]
    return trial_table(header, metrics)


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(3)
    text = _text(rng)
    base, twin, worse = _model_sums(rng, text), _model_sums(rng, text), _model_sums(rng, text, shift=0.2)
    for key, method, sums, day in [("base0000", "baseline", base, 0), ("twin0000", "rtn", twin, 1),
                                   ("worse000", "hqq", worse, 2)]:  # fmt: skip
        write_trial(tmp_path, key, _trial(key, method, sums.sums, day))
    return tmp_path


def test_series_round_trip_through_the_store(store):
    frame = read_results(store).frame
    sums = window_sums(frame, "worse000", "perplexity", "window_nll_sum")
    assert sums is not None and len(sums.sums) == WINDOWS and list(sums.tokens) == [TOKENS] * WINDOWS
    assert sums.sums.sum() == pytest.approx(frame.query("trial_key == 'worse000' and metric == 'window_nll_sum'")
                                            ["value"].iloc[0])  # fmt: skip
    assert paired_metric(frame, "twin0000", "base0000", "perplexity").significant is False
    assert paired_metric(frame, "worse000", "base0000", "perplexity").significant is True


def test_compare_says_within_noise_and_shows_the_stderr(store):
    frame = read_results(store).frame
    text = compare(frame, ["twin0000", "worse000"]).text()
    row = text.loc[paired_name("perplexity")]
    assert list(row)[:2] == ["", "within noise"]
    shift, stderr = (float(x) for x in row.iloc[2].split(" ± "))  # e.g. "+0.1769 ± 0.035"
    assert shift == pytest.approx(0.2, abs=3 * stderr)
    assert list(text.loc["ppl ±"]) == ["0.500"] * 3
    assert display_table(wide(frame))["ppl"].str.endswith(" ± 0.500").all()


def test_an_old_store_without_series_or_stderr_still_compares():
    frame = read_results(STORE_V1).frame
    assert "series" not in frame or frame["series"].isna().all()
    keys = list(frame.loc[frame["method"] != "baseline", "trial_key"].unique()[:2])
    text = compare(frame, keys).text()
    assert paired_name("perplexity") not in text.index and "ppl ±" not in text.index
    assert paired_metric(frame, keys[0], keys[1], "perplexity") is None
    assert not display_table(wide(frame))["ppl"].str.contains("±").any()


def test_the_compare_tab_leaves_a_within_noise_difference_uncoloured(store):
    from quantbench.app.ui.compare_tab import comparison_html

    page = comparison_html(compare(read_results(store).frame, ["twin0000", "worse000"]))
    ppl_row = next(r for r in page.split("<tr>") if r.startswith("<th>ppl</th>"))
    cells = ppl_row.split("<td")[1:]
    assert 'class=""' in cells[1] and 'class="qb-worse"' in cells[2]
    assert "within noise" in page
