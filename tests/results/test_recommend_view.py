"""A recommendation as tables and as the quality-vs-memory chart with its budget lines."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
from recommend_trials import fill, store_trials

from quantbench.planner.presets import preset
from quantbench.results.charts import add_budget
from quantbench.results.recommend import Bounds, Request, recommend
from quantbench.results.recommend_view import budget_chart, excluded_table, ranked_table, unmeasured_table
from quantbench.results.store import read_results

ARCH = preset("smollm2-135m")


@pytest.fixture
def frame(tmp_path):
    return read_results(fill(tmp_path, *store_trials())).frame


def answer(frame, **bounds):
    request = Request("tiny", Bounds(**bounds), memory_gib=0.85, context=512, candidates=("bnb:bits=8",))
    return recommend(frame, request, arch=ARCH)


def test_tables(frame):
    rec = answer(frame, max_kld=0.085, max_ppl_increase_pct=10)
    ranked = ranked_table(rec)
    assert list(ranked.columns) == ["#", "setting", "trial", "memory GiB (margin)", "max KLD 0.085: value (margin)",
                                    "max ppl +10%: value (margin)", "within noise", "memory calibration"]  # fmt: skip
    # triton 4-bit: ppl 10.8 vs 10 (+8%, 2 points of room) is within noise of the bound: the
    # standard errors of 1% each give ±1.96·√2·1% ≈ ±2.8% on the ratio.
    assert ranked.iloc[0].tolist() == [1, "triton:bits=4,group_size=64", "tri4", "0.818 (+0.032)", "0.08 (+0.005)",
                                       "8 (+2)", "max ppl +10%", "planner only"]  # fmt: skip
    why = dict(zip(excluded_table(rec)["setting"], excluded_table(rec)["why"], strict=True))
    assert why["hqq:nbits=4,group_size=64"] == "max KLD 0.085: 0.15 (-0.065); max ppl +10%: 15 (-5)"
    assert why["bnb:bits=4"] == "RuntimeError: out of memory"
    assert unmeasured_table(rec).to_dict("records") == [{"setting": "bnb:bits=8", "memory GiB": 0.796,
                                                         "needs": "a trial"}]  # fmt: skip


def test_budget_chart_draws_the_measured_points_and_both_lines(frame):
    rec = answer(frame, max_kld=0.085)
    figure = budget_chart(rec, frame)
    names = [t.name for t in figure.data]
    assert names[-2:] == ["memory budget: 0.85 GiB", "max KLD 0.085"]
    markers = [t for t in figure.data if "markers" in t.mode]  # the Pareto front's line repeats its points
    points = sorted((round(x, 1), y) for t in markers for x, y in zip(t.x, t.y, strict=True))
    # The 5 ok trials at the planner's MiB (the failed bnb trial and the unmeasured bnb:bits=8 are absent).
    assert points == [(771.5, 0.15), (837.8, 0.08), (837.8, 0.09), (888.4, 0.01), (1185.9, 0.0)]
    assert list(figure.data[-2].x) == pytest.approx([0.85 * 1024] * 2) and list(figure.data[-1].y) == [0.085] * 2
    assert figure.layout.xaxis.title.text == "estimated peak memory, cpu (MiB)"


def test_a_perplexity_bound_is_drawn_at_the_baselines_perplexity(frame):
    figure = budget_chart(answer(frame, max_ppl_increase_pct=10), frame)
    assert figure.data[-1].name == "max ppl +10% of the baseline"
    assert list(figure.data[-1].y) == pytest.approx([11.0, 11.0])


def test_the_budget_on_a_chart_without_points():
    figure = add_budget(go.Figure(), 1024.0, "budget")
    assert [t.name for t in figure.data] == ["budget"] and list(figure.data[0].y) == [0, 1]
