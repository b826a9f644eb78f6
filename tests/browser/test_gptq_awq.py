"""GPTQ and AWQ from the dashboard, as a new user tries them: both are listed in the Run tab as
runnable here, a GPTQ and an AWQ trial of the embedded model run from it (tiny calibration), and
both show in Results and as points in Charts. Its own dashboard and store (conftest.py)."""

from __future__ import annotations

import time

import pytest
from test_dashboard import choose, open_tab, shot

pytestmark = pytest.mark.slow  # quantizes the embedded model twice

# Calibration just large enough for GPTQModel (it wants windows of 10 tokens or more); AWQ's clip
# search costs in proportion to its calibration tokens, so it gets the fewest.
TRIALS = {
    "gptq": {"n_samples": "4", "seq_len": "32"},
    "awq": {"n_samples": "2", "seq_len": "32"},
}
LABELS = {
    "gptq": "gptq:bits=4,group_size=64,n_samples=4,seq_len=32",
    "awq": "awq:bits=4,group_size=64,n_samples=2,seq_len=32",
}
# Both quantized, then perplexity on 128 tokens: about 4 min of CPU; 10 min were not enough at load 24.
RUN_TIMEOUT_S = 1200


def wait_for_run(page, timeout_s: float) -> str:
    """The run's final status line; on timeout, a failure that shows how far it got."""
    deadline, status = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        status = page.locator("#run-status").inner_text()
        if status.startswith(("Finished", "Run stopped")):
            return status
        page.wait_for_timeout(5000)
    pytest.fail(f"no end after {timeout_s} s: {status} | {page.locator('#run-progress').inner_text()}")


def test_gptq_and_awq_are_listed_as_runnable(page, artifacts):
    open_tab(page, "Run")  # Recommend is the first tab
    for method in TRIALS:
        choose(page, "run-method", method)
        form = page.get_by_text(f"{method} · gptqmodel ", exact=False)
        form.wait_for()
        assert "✓ runs on cpu" in form.inner_text(), form.inner_text()
    shot(page, artifacts, "run-gptq-awq-forms")


def test_run_a_gptq_and_an_awq_trial(page, artifacts):
    open_tab(page, "Run")
    page.locator("#run-model input, #run-model textarea").first.fill("embedded:smollm2-135m")
    page.locator("#run-clear").click()
    for method, params in TRIALS.items():
        choose(page, "run-method", method)
        for field, value in params.items():
            page.locator(f"#param-{method}-{field} input").fill(value)
        page.locator("#run-add").click()
        page.locator("#run-queue").get_by_text(LABELS[method]).wait_for()
    page.locator("#eval-perplexity-seq_len input").fill("64")
    page.locator("#eval-perplexity-max_tokens").locator("input, textarea").first.fill("128")
    page.locator("#run-start").click()
    status = wait_for_run(page, RUN_TIMEOUT_S)
    assert status.startswith("Finished"), (status, page.locator("#run-error").inner_text())
    progress = page.locator("#run-progress").inner_text()
    assert progress.count("ok") >= 2, progress
    assert all(label in progress for label in LABELS.values()), progress
    assert "Traceback" not in page.content()
    shot(page, artifacts, "run-gptq-awq")


def test_results_list_both_trials(page, artifacts):
    open_tab(page, "Results")
    page.locator("#results-refresh").click()
    page.locator("#results-summary").get_by_text("2 trials").wait_for()
    table = page.locator("#results-table").inner_text()
    assert all(label in table for label in LABELS.values()), table
    shot(page, artifacts, "results-gptq-awq")


def test_chart_has_a_point_per_trial(page, artifacts):
    open_tab(page, "Charts")
    page.locator("#chart-draw").click()
    page.locator("#chart .js-plotly-plot").wait_for()
    names = page.evaluate(
        "() => document.querySelector('#chart .js-plotly-plot').data.map(t => [t.name, (t.x || []).length])"
    )
    # One point per method; the Pareto front's line repeats points of both.
    assert {name: count for name, count in names if name in ("gptq", "awq")} == {"gptq": 1, "awq": 1}, names
    shot(page, artifacts, "charts-gptq-awq")
