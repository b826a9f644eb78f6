"""The dashboard in a real browser: log in, see a bad model path rejected in the page, run two
small trials of the embedded model from the Run tab, then find them in Results, Compare, Charts
and an exported CSV. The tests run in file order and share one app and one page (conftest.py)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pandas as pd
import pytest

from quantbench.app.inputs import as_text, default_help
from quantbench.evals.registry import get_eval

# Two trials of the embedded model at 128 tokens: ~20-40 s each on an idle CPU; 200 s was seen under load.
RUN_TIMEOUT_MS = 480_000


def shot(page, artifacts, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def choose(page, elem_id: str, option: str) -> None:
    """Pick `option` in the Gradio dropdown with this elem_id."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def error_text(page, elem_id: str) -> str:
    box = page.locator(f"#{elem_id}")
    box.wait_for(state="visible")
    return box.inner_text()


def test_login_is_required(browser, ui_url):
    context = browser.new_context()
    page = context.new_page()
    page.goto(ui_url)
    page.locator("input[type=password]").wait_for()
    page.locator("input[type=text]").first.fill("tester")
    page.locator("input[type=password]").fill("wrong")
    page.get_by_role("button", name="Login").click()
    page.get_by_text(re.compile("incorrect", re.IGNORECASE)).wait_for()
    assert page.locator("#run-start").count() == 0
    context.close()


def test_invalid_parameter_is_shown(page):
    open_tab(page, "Run")  # Recommend is the first tab
    choose(page, "run-method", "rtn")
    page.locator("#param-rtn-group_size input").fill("48")
    page.locator("#run-add").click()
    text = error_text(page, "run-method-error")
    assert "group_size" in text and "power of two" in text, text
    assert "Traceback" not in page.content()
    page.locator("#param-rtn-group_size input").fill("64")


def test_missing_model_path_is_shown(page, artifacts):
    open_tab(page, "Run")  # Recommend is the first tab
    page.locator("#run-model input, #run-model textarea").first.fill("./no-such-model")
    page.locator("#run-start").click()
    page.locator("#run-error").get_by_text("not found").wait_for()
    text = page.locator("#run-error").inner_text()
    assert "model './no-such-model' not found" in text, text
    shot(page, artifacts, "run-error")


def test_run_tab_eval_controls_show_their_params_defaults_and_descriptions(page, artifacts):
    """The chosen evals' forms come from their Params: each control starts at the field's default
    and its help is the field's description; ticking an eval shows its form."""
    open_tab(page, "Run")
    latency = page.locator("#eval-latency-prompt_lengths")
    assert latency.is_hidden()  # only perplexity is chosen at first
    page.locator("#run-evals").get_by_text("latency:", exact=False).click()
    latency.wait_for(state="visible")
    shot(page, artifacts, "run-eval-forms")
    for name, field in [("perplexity", "seq_len"), ("latency", "prompt_lengths")]:
        info = get_eval(name).Params.model_fields[field]
        control = page.locator(f"#eval-{name}-{field}")
        assert control.locator("input, textarea").first.input_value() == str(as_text(info.default))
        assert control.get_by_text(default_help(info), exact=True).is_visible()
    page.locator("#run-evals").get_by_text("latency:", exact=False).click()
    latency.wait_for(state="hidden")


@pytest.mark.slow  # needs the trials of the embedded model run above
def test_run_two_trials(page, artifacts):
    open_tab(page, "Run")  # Recommend is the first tab
    page.locator("#run-model input, #run-model textarea").first.fill("embedded:smollm2-135m")
    choose(page, "run-method", "rtn")
    page.locator("#param-rtn-bits input").fill("8")
    page.locator("#run-add").click()
    page.locator("#run-queue").get_by_text("rtn:bits=8").wait_for()
    page.locator("#eval-perplexity-seq_len input").fill("64")
    page.locator("#eval-perplexity-max_tokens").locator("input, textarea").first.fill("128")
    page.locator("#run-start").click()
    page.locator("#run-status").get_by_text("Running").wait_for()
    shot(page, artifacts, "run-progress")
    page.locator("#run-status").get_by_text("Finished").wait_for(timeout=RUN_TIMEOUT_MS)
    progress = page.locator("#run-progress").inner_text()
    assert progress.count("ok") >= 2 and "rtn:bits=8" in progress, progress
    assert page.locator("#run-error").is_hidden()
    assert "Traceback" not in page.content()
    shot(page, artifacts, "run")


@pytest.mark.slow  # needs the trials of the embedded model run above
def test_results_list_the_trials(page, artifacts):
    open_tab(page, "Results")
    page.locator("#results-summary").get_by_text("2 trials").wait_for()
    table = page.locator("#results-table").inner_text()
    assert "rtn:bits=8" in table and "baseline" in table
    # Sorting by perplexity one way, then the other, swaps which trial comes first. (The grid's
    # rows are not <tr> elements, so the order is read from the table's text.)
    rtn_first = []
    for order in ("ascending", "descending"):
        header = page.locator('#results-table th[title="ppl"]')
        header.hover()
        header.get_by_role("button", name="Open cell menu").click()
        page.get_by_role("menuitem", name=f"Sort {order}").click()
        page.wait_for_timeout(500)  # the table re-sorts in the browser, on its next frame
        text = page.locator("#results-table").inner_text()
        rtn_first.append(text.index("\nrtn:bits=8,group_size=64\n") < text.index("\nbaseline:dtype=float32\n"))
    assert rtn_first in ([True, False], [False, True]), rtn_first
    shot(page, artifacts, "results")


@pytest.mark.slow  # needs the trials of the embedded model run above
def test_compare_opens_with_every_trial_against_the_baseline(page, artifacts):
    open_tab(page, "Compare")
    # No trial picked: the newest model's ok trials against its baseline, already compared.
    page.locator("#compare-reference-line").get_by_text("Every ok trial of the newest model (2)").wait_for()
    table = page.locator("#compare-result")
    text = table.inner_text()
    assert "(reference)" in text and "baseline" in text.split("(reference)")[0]
    assert "rtn:bits=8,group_size=64" in text.split("(reference)")[1]
    assert "Δ perplexity" in text and "memory saved ×" in text
    assert "paired Δ" in text  # the paired test against the baseline, on the same windows
    # rtn:bits=8 is smaller than the fp32 baseline: its memory ratio cell is marked better.
    assert page.locator("#compare-result td.qb-better").count() >= 1
    shot(page, artifacts, "compare")


@pytest.mark.slow  # needs the trials of the embedded model run above
def test_chart_has_one_labelled_point_per_trial_in_its_family_colour(page, artifacts):
    open_tab(page, "Charts")
    page.locator("#chart-draw").click()
    page.locator("#chart .js-plotly-plot").wait_for()
    traces = page.evaluate(
        "() => document.querySelector('#chart .js-plotly-plot').data.map("
        "t => ({name: t.name, mode: t.mode, text: t.text || [], color: (t.marker || {}).color, n: (t.x || []).length}))"
    )
    points = {t["name"]: t for t in traces if "markers" in (t["mode"] or "")}
    assert {name: t["text"] for name, t in points.items()} == {"baseline": ["fp32"], "rtn": ["8b g64"]}, traces
    assert points["baseline"]["color"] != points["rtn"]["color"]
    labels = page.locator("#chart .js-plotly-plot g.textpoint text").evaluate_all("els => els.map(e => e.textContent)")
    assert sorted(labels) == ["8b g64", "fp32"], labels  # drawn beside the points, not only on hover
    shot(page, artifacts, "charts")


@pytest.mark.slow  # needs the trials of the embedded model run above
def test_csv_export(page, artifacts):
    open_tab(page, "Export")
    page.locator("#export-run").click()
    link = page.locator("#export-file a").first
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    table = pd.read_csv(download.value.path())
    assert sorted(table["method_label"]) == ["baseline:dtype=float32", "rtn:bits=8,group_size=64"]
    assert (table["status"] == "ok").all()
    assert table["perplexity"].between(1, 1e4).all()
    shot(page, artifacts, "export")


@pytest.mark.slow  # starts a worker for the embedded model
def test_cancel_stops_the_running_trial(page, artifacts):
    open_tab(page, "Run")
    page.locator("#run-clear").click()
    choose(page, "run-method", "baseline")
    choose(page, "param-baseline-compute_dtype", "bfloat16")
    page.locator("#run-add").click()
    page.locator("#run-queue").get_by_text("baseline:dtype=bfloat16").wait_for()
    page.locator("#run-start").click()
    page.locator("#run-status").get_by_text("Running").wait_for()
    page.locator("#run-cancel").click()
    page.locator("#run-status").get_by_text("Cancelled").wait_for()
    assert "cancelled" in page.locator("#run-progress").inner_text()
    shot(page, artifacts, "run-cancelled")
    open_tab(page, "Results")
    page.locator("#results-refresh").click()
    page.locator("#results-summary").get_by_text("2 trials").wait_for()  # nothing of it was stored
    assert "dtype=bfloat16" not in page.locator("#results-table").inner_text()


def test_planner(page, artifacts):
    open_tab(page, "Planner")
    choose(page, "plan-gpu", "RTX 4090 (24 GiB)")
    page.locator("#plan-run").click()
    page.locator("#plan-summary").get_by_text("largest context").wait_for()
    assert "RTX 4090" in page.locator("#plan-fits").inner_text()
    assert page.locator("#plan-chart .js-plotly-plot").count() == 1
    shot(page, artifacts, "planner")
    page.locator("#plan-prefill-chunk input").fill("1024")
    page.locator("#plan-run").click()
    page.locator("#plan-breakdown").get_by_text("prefill of 1 × 1024 tokens").wait_for()
    page.locator("#plan-bits input").fill("5")
    page.locator("#plan-run").click()
    assert "bits: Input should be 2, 3, 4 or 8" in error_text(page, "plan-error")


@pytest.mark.slow  # needs the trials of the embedded model run above
def test_planner_checks_itself_against_the_store(page, artifacts):
    open_tab(page, "Planner")
    page.get_by_text("How close is the planner?").click()
    page.locator("#plan-calibrate").click()
    per_method = page.locator("#plan-calibration")
    per_method.get_by_text("peak RSS, whole process").first.wait_for()
    text = per_method.inner_text()
    assert "baseline" in text and "rtn" in text and "weight bytes" in text, text
    rows = page.locator("#plan-calibration-rows").inner_text()
    assert "rtn:bits=8,group_size=64" in rows and "peak RSS without library code" in rows, rows
    assert page.locator("#plan-calibrate-error").is_hidden()
    shot(page, artifacts, "planner-calibration")


def test_page_needs_nothing_from_the_internet(page, requested_urls, ui_url):
    """No CDN font, script or analytics call: an offline machine would wait on each of them."""
    own = urlsplit(ui_url).netloc
    assert requested_urls, "the page fixture recorded no requests"
    foreign = [u for u in requested_urls if urlsplit(u).scheme in ("http", "https") and urlsplit(u).netloc != own]
    assert foreign == []
