import json
import math

import pytest
from rows import fill, trial

from quantbench.results import charts
from quantbench.results.charts import pareto_front, quality_vs_size
from quantbench.results.store import read_results

NAN = math.nan


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([(1, 1)], [True]),  # a single point
        ([(3, 3), (1, 1), (2, 2)], [False, True, False]),  # all dominated but one
        ([(1, 1), (1, 1), (2, 2)], [True, True, False]),  # equal points are both on the front
        ([(1, 5), (2, 3), (3, 1)], [True, True, True]),  # a trade-off curve
        ([(1, 5), (1, 4), (2, 4)], [False, True, False]),  # equal x or equal y: the better one wins
        ([(1, 5), (2, 5), (3, 6), (4, 2)], [True, False, False, True]),
        ([(NAN, 1), (2, NAN), (3, 3)], [False, False, True]),  # unmeasured points are never on it
        ([], []),
    ],
)
def test_pareto_front_on_hand_checked_sets(points, front):
    assert pareto_front([p[0] for p in points], [p[1] for p in points]) == front


def test_quality_vs_size_draws_each_comparability_group_with_its_front(mixed_store):
    figure = quality_vs_size(read_results(mixed_store).frame)
    names = [t.name for t in figure.data]
    builtin = "tiny · builtin · batch_size=1 max_tokens=128 seq_len=32"
    wiki = "tiny · wikitext2 · batch_size=1 max_tokens=128 seq_len=32"
    assert names == [builtin, f"Pareto front · {builtin}", wiki, f"Pareto front · {wiki}"]
    dominated, front = figure.data[0], figure.data[1]
    assert list(dominated.x) == []  # base, bnb4 and hqq2 are each best at something
    assert list(front.x) == [0.6, 1.0, 4.0] and list(front.y) == [30.0, 11.0, 10.0]  # MiB, by size
    assert front.marker.symbol == "star" and front.mode == "lines+markers"
    assert "bnb:bits=4,quant_type=nf4" in front.hovertext[1] and "trial bnb4" in front.hovertext[1]
    assert "ppl 11.000" in front.hovertext[1] and "weights MiB 1.0" in front.hovertext[1]
    assert "broke" not in json.dumps(figure.to_plotly_json(), default=str)  # failed trials have no point


def test_a_dominated_point_is_drawn_off_the_front(tmp_path):
    fill(
        tmp_path,
        trial("a", metrics={"perplexity": 10.0, "weight_bytes": 4.0}),
        trial("b", "rtn", {"bits": 4}, metrics={"perplexity": 12.0, "weight_bytes": 5.0}),
    )
    dominated, front = quality_vs_size(read_results(tmp_path).frame).data
    assert list(dominated.hovertext) == [h for h in dominated.hovertext if "trial b" in h] and len(dominated.x) == 1
    assert list(front.x) == [4.0 / 2**20]


@pytest.mark.parametrize("name", sorted(charts.CHARTS))
def test_figure_json_is_deterministic_whatever_the_row_order(mixed_store, name):
    frame = read_results(mixed_store).frame
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert charts.CHARTS[name](frame).to_json() == charts.CHARTS[name](shuffled).to_json()


def test_bars_group_by_machine_and_show_variants(tmp_path):
    fill(
        tmp_path,
        trial("a", metrics={"decode_tokens_per_second@batch=1": 10.0, "decode_tokens_per_second@batch=4": 30.0}),
        trial("b", "rtn", {"bits": 4}, metrics={"decode_tokens_per_second@batch=1": 20.0}, hardware="gpu: H100"),
    )
    figure = charts.throughput_bars(read_results(tmp_path).frame)
    assert [t.name for t in figure.data] == ["decode tok/s batch=1", "decode tok/s batch=4"]
    groups, methods = figure.data[0].x
    assert list(methods) == ["baseline:dtype=float32 (a)", "rtn:bits=4 (b)"]
    assert len(set(groups)) == 2 and any("gpu: H100" in g for g in groups)
    assert list(figure.data[0].y) == [10.0, 20.0] and list(figure.data[1].y) == [30.0]


def test_memory_bars_in_mib(mixed_store):
    figure = charts.memory_bars(read_results(mixed_store).frame)
    assert figure.data[0].name == "weights MiB" and figure.layout.title.text == "Weights and peak memory"
    assert sorted(figure.data[0].y) == [0.6, 1.0, 2.0, 4.0]
    assert figure.layout.yaxis.title.text == "MiB"


def test_a_chart_without_data_says_why(tmp_path):
    fill(tmp_path, trial("a", metrics={"weight_bytes": 4.0}))
    frame = read_results(tmp_path).frame
    for build, why in [(charts.throughput_bars, "no trial measured decode_tokens_per_second"),
                       (charts.quality_vs_size, "no trial measured perplexity")]:  # fmt: skip
        figure = build(frame)
        assert not figure.data and figure.layout.annotations[0].text.startswith(why)


def test_prefill_bars_per_prompt_length_in_seconds(tmp_path):
    fill(tmp_path, trial("a", metrics={"prefill_seconds@len=512": 0.4, "prefill_seconds@len=128": 0.1}))
    figure = charts.prefill_bars(read_results(tmp_path).frame)
    assert [t.name for t in figure.data] == ["prefill s len=128", "prefill s len=512"]
    assert figure.layout.yaxis.title.text == "s"
