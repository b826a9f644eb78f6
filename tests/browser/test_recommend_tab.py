"""The Recommend tab in a real browser over a synthetic store of the smollm2-135m preset (so the
planner prices it from its bundled architecture): it opens first, picks a GPU and a KLD bound, shows
the ranked table and the chart with the budget lines (read through Plotly's own data in the page), and
shows bad input as a red message; its queue button's sweep runs exactly the unmeasured trials."""

from __future__ import annotations

import pytest
from recommend_trials import fill, store_trials

from quantbench.app.ui.recommend_tab import queue_sweep
from quantbench.app.ui.run_session import RunSession
from quantbench.errors import QuantbenchError
from quantbench.results.recommend import Bounds, Request, recommend, sweep_yaml
from quantbench.results.store import read_results
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory):
    """Overrides conftest's empty store: the app must start with trials to recommend from."""
    return fill(tmp_path_factory.mktemp("recommend-store"), *store_trials(MODEL))


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def bound(page, field: str, text: str) -> None:
    page.locator(f"#rec-{field} input, #rec-{field} textarea").first.fill(text)


def test_recommend_is_the_first_tab(page):
    assert page.get_by_role("tab").first.inner_text().strip() == "Recommend"
    from playwright.sync_api import expect

    expect(page.locator("#rec-model input")).to_have_value(MODEL)  # the store's model, filled on load


def test_gpu_and_kld_bound_give_the_ranked_table_and_the_budget_chart(page, artifacts):
    choose(page, "rec-gpu", "T4 (16 GiB)")
    page.locator("#rec-context input").fill("512")
    bound(page, "max_kld", "0.085")
    page.locator("#rec-run").click()
    page.locator("#rec-summary").get_by_text("on T4 (16 GiB), cuda").wait_for()
    ranked = page.locator("#rec-ranked").inner_text()
    assert "baseline:dtype=float32" in ranked and "hqq" not in ranked, ranked
    excluded = page.locator("#rec-excluded").inner_text()
    assert "max KLD 0.085: 0.15 (-0.065)" in excluded and "RuntimeError: out of memory" in excluded, excluded
    page.locator("#rec-chart .js-plotly-plot").wait_for()
    traces = page.evaluate(
        "() => document.querySelector('#rec-chart .js-plotly-plot').data"
        ".map(t => ({name: t.name, x: t.x, y: t.y, mode: t.mode}))"
    )
    names = [t["name"] for t in traces]
    # A trace per method family, the Pareto front's line through some of their points, then the budget's two lines.
    assert names[-2:] == ["memory budget: T4 (16 GiB)", "max KLD 0.085"], names
    assert traces[-2]["x"] == [16 * 1024, 16 * 1024] and traces[-1]["y"] == [0.085, 0.085]
    families = [t for t in traces if "markers" in t["mode"]]
    assert [t["name"] for t in families] == ["baseline", "hqq", "rtn", "triton"], names
    assert sum(len(t["x"]) for t in families) == 5  # every ok trial is a point
    assert page.locator("#rec-error").is_hidden()
    page.screenshot(path=str(artifacts / "recommend.png"), full_page=True)


@pytest.mark.parametrize(
    "field, text, message",
    [
        ("max_kld", "small", "Max mean KLD (nats) must be a number, got 'small'"),
        ("min_top1", "120", "min_top1 is a percentage (0-100), got 120.0"),
    ],
)
def test_a_bound_that_is_not_a_number_is_a_red_message(page, field, text, message):
    bound(page, field, text)
    page.locator("#rec-run").click()
    page.locator("#rec-error").get_by_text(message).wait_for()
    bound(page, field, "")


def test_an_unknown_gpu_and_a_model_without_trials_are_red_messages(page):
    bound(page, "max_kld", "0.085")
    page.locator("#rec-gpu input").fill("RTX 9999")
    page.locator("#rec-gpu input").press("Enter")
    page.locator("#rec-run").click()
    page.locator("#rec-error").get_by_text("unknown GPU 'RTX 9999'").wait_for()
    choose(page, "rec-gpu", "T4 (16 GiB)")
    page.locator("#rec-model input").fill("llama-3.1-8b")
    page.locator("#rec-model input").press("Enter")
    page.locator("#rec-run").click()
    page.locator("#rec-error").get_by_text("no trials of 'llama-3.1-8b' in the store").wait_for()


@pytest.mark.slow  # two real trials of the tiny model
def test_queue_runs_exactly_the_unmeasured_trials(tiny_model_dir, tmp_path):
    """A baseline of the tiny model is measured; rtn 8-bit is not: the sweep of the recommendation,
    queued through the Run tab's session, measures exactly it, and the next answer ranks it."""
    store = tmp_path / "store"
    model = ModelRef(str(tiny_model_dir))
    evals = [EvalSpec("perplexity", {"corpus": "builtin", "seq_len": 32, "max_tokens": 96})]
    session = RunSession(store)
    session.start([plan_trial(model, MethodSpec.parse("baseline"), evals)])
    session.wait(300)
    request = Request(str(tiny_model_dir), Bounds(max_ppl_increase_pct=50), memory_gib=8, candidates=("rtn:bits=8",))
    rec = recommend(read_results(store).frame, request)
    assert [c.label for c in rec.unmeasured] == ["rtn:bits=8,group_size=64"]
    sweep = tmp_path / "unmeasured.yaml"
    sweep.write_text(sweep_yaml(rec.sweep))
    assert queue_sweep(session, str(sweep)) == "Started 1 trial (`rtn:bits=8,group_size=64`): follow them in **Run**."
    session.wait(300)
    rec = recommend(read_results(store).frame, request)
    # Their order depends on the peaks each trial measured (calibration), not asserted here.
    assert sorted(c.label for c in rec.ranked) == ["baseline:dtype=float32", "rtn:bits=8,group_size=64"]
    assert rec.unmeasured == () and read_results(store).frame["trial_key"].nunique() == 2
    with pytest.raises(QuantbenchError, match="nothing to queue"):
        queue_sweep(session, None)
