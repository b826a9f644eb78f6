import json
import math
import re

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


BUILTIN = "tiny · builtin · batch_size=1 max_tokens=128 seq_len=32"
WIKI = "tiny · wikitext2 · batch_size=1 max_tokens=128 seq_len=32"


def _trace(figure, name):
    return next(t for t in figure.data if t.name == name)


def _hover(trace, point: int) -> str:
    """What plotly shows on hovering `point` of `trace`: its hovertemplate filled from its customdata."""
    data = trace.customdata[point] if trace.customdata is not None else []
    text = re.sub(r"%\{customdata\[(\d+)\]\}", lambda m: str(data[int(m.group(1))]), trace.hovertemplate)
    assert "%{" not in text, text  # every placeholder is one plotly fills from customdata
    return text.removesuffix("<extra></extra>")


def test_quality_vs_size_draws_one_coloured_labelled_trace_per_family_and_group(mixed_store):
    figure = quality_vs_size(read_results(mixed_store).frame)
    names = [t.name for t in figure.data]
    assert names == [f"baseline · {BUILTIN}", f"bnb · {BUILTIN}", f"hqq · {BUILTIN}", f"Pareto front · {BUILTIN}",
                     f"quanto · {WIKI}", f"Pareto front · {WIKI}"]  # fmt: skip
    for method in ("baseline", "bnb", "hqq"):
        trace = _trace(figure, f"{method} · {BUILTIN}")
        assert trace.marker.color == charts.FAMILY_COLOURS[method] and "text" in trace.mode
    assert len({charts.FAMILY_COLOURS[m] for m in ("baseline", "bnb", "hqq", "quanto")}) == 4
    assert [list(_trace(figure, f"{m} · {BUILTIN}").text) for m in ("baseline", "bnb", "hqq")] == [
        ["fp32"], ["4b nf4"], ["2b"]]  # fmt: skip
    front = _trace(figure, f"Pareto front · {BUILTIN}")
    assert list(front.x) == [0.6, 1.0, 4.0] and list(front.y) == [30.0, 11.0, 10.0]  # MiB, by size
    assert front.mode == "lines" and front.line.dash == "dot"
    bnb = _trace(figure, f"bnb · {BUILTIN}")
    assert list(bnb.marker.symbol) == ["star"]  # base, bnb4 and hqq2 are each best at something
    assert "bnb:bits=4,quant_type=nf4" in _hover(bnb, 0) and "trial bnb4" in _hover(bnb, 0)
    assert "ppl 11.000" in _hover(bnb, 0) and "weights MiB 1.0" in _hover(bnb, 0)
    assert "broke" not in json.dumps(figure.to_plotly_json(), default=str)  # failed trials have no point


def test_a_dominated_point_is_a_circle_off_the_front(tmp_path):
    fill(
        tmp_path,
        trial("a", metrics={"perplexity": 10.0, "weight_bytes": 4.0}),
        trial("b", "rtn", {"bits": 4}, metrics={"perplexity": 12.0, "weight_bytes": 5.0}),
    )
    figure = quality_vs_size(read_results(tmp_path).frame)
    assert [t.name for t in figure.data] == ["baseline", "rtn", "Pareto front"]  # one group: no group label
    assert list(figure.data[1].marker.symbol) == ["circle"] and list(figure.data[0].marker.symbol) == ["star"]
    assert list(figure.data[2].x) == [4.0 / 2**20]


def test_hover_names_each_point_and_writes_what_the_trace_shares_once(tmp_path):
    fill(
        tmp_path,
        trial("a", "rtn", {"bits": 4}, metrics={"perplexity": 12.0, "weight_bytes": 5 * 2**20}),
        trial("b", "rtn", {"bits": 8}, metrics={"perplexity": 10.5, "weight_bytes": 9 * 2**20}),
    )
    rtn = _trace(quality_vs_size(read_results(tmp_path).frame), "rtn")
    shared = "<br>model tiny<br>device cpu · kernel rtn kernel<br>cpu: test"
    assert [_hover(rtn, i) for i in range(2)] == [
        f"<b>rtn:bits=4</b><br>trial a{shared}<br>ppl 12.000<br>weights MiB 5.0",
        f"<b>rtn:bits=8</b><br>trial b{shared}<br>ppl 10.500<br>weights MiB 9.0",
    ]
    assert rtn.hovertemplate.count("model tiny") == 1 and "tiny" not in json.dumps(rtn.customdata)


@pytest.mark.parametrize(
    ("label", "short"),
    [
        ("rtn:bits=4,group_size=64", "4b g64"),
        ("baseline:compute_dtype=bfloat16", "bf16"),
        ("baseline:dtype=float32", "fp32"),
        ("hqq:group_size=64,nbits=4", "g64 4b"),
        ("quanto:weights=int8", "int8"),
        ("rtn:bits=3,group_size=64,symmetric=True", "3b g64"),
        ("gguf:quant_type=Q4_K_M", "Q4_K_M"),
        ("mine:alpha=0.5", "alpha=0.5"),
        ("dynamic", "dynamic"),
    ],
)
def test_short_labels(label, short):
    assert charts.short_label(label) == short


def test_an_unknown_family_gets_a_stable_colour_of_its_own():
    assert charts.family_colour("mine") == charts.family_colour("mine") in charts.OTHER_COLOURS
    assert charts.family_colour("rtn") != charts.family_colour("bnb")


def _floor_store(tmp_path):
    return fill(
        tmp_path,
        trial("fp32", metrics={"kld_mean": 0.0, "kld_mean_stderr": 0.0, "perplexity": 10.0, "weight_bytes": 4e6}),
        trial("bf16", params={"compute_dtype": "bfloat16"}, day=1,
              metrics={"kld_mean": 0.002, "kld_mean_stderr": 0.0004, "perplexity": 10.01, "weight_bytes": 2e6}),
        trial("rtn8", "rtn", {"bits": 8}, day=2,
              metrics={"kld_mean": 0.001, "kld_mean_stderr": 0.0002, "perplexity": 10.0, "weight_bytes": 1e6}),
        trial("rtn4", "rtn", {"bits": 4}, day=3,
              metrics={"kld_mean": 0.3, "kld_mean_stderr": 0.02, "perplexity": 12.0, "weight_bytes": 0.6e6}),
    )  # fmt: skip


@pytest.mark.parametrize(("quality", "floor"), [("kld_mean", 0.002), ("perplexity", 10.01)])
def test_the_noise_floor_is_a_dashed_line_at_the_half_precision_baseline(tmp_path, quality, floor):
    figure = quality_vs_size(read_results(_floor_store(tmp_path)).frame, quality)
    line = _trace(figure, "noise floor: bf16 vs fp32")
    assert list(line.y) == [floor, floor] and line.line.dash == "dash"
    assert list(line.x) == [0.6e6 / 2**20, 4e6 / 2**20]  # across the group's points
    assert "indistinguishable from the original" in line.hovertext


def test_error_bars_come_from_the_stored_standard_errors(tmp_path):
    figure = quality_vs_size(read_results(_floor_store(tmp_path)).frame, "kld_mean")
    rtn = _trace(figure, "rtn")
    assert list(rtn.text) == ["4b", "8b"] and list(rtn.error_y.array) == [0.02, 0.0002]
    assert rtn.error_y.visible and figure.layout.yaxis.title.text == "KLD"
    assert _trace(figure, "baseline").error_y.array == (0.0004, 0.0)  # by trial key: bf16, fp32
    # perplexity has no stderr rows in this store: no bars rather than bars of zero
    assert _trace(quality_vs_size(read_results(tmp_path).frame), "rtn").error_y.array is None


def test_no_floor_line_without_a_half_precision_baseline(mixed_store):
    figure = quality_vs_size(read_results(mixed_store).frame, "kld_mean")
    assert not [t for t in figure.data if t.name.startswith("noise floor")]


def test_quality_vs_estimated_memory_prices_each_trial_with_the_planner(tmp_path):
    from quantbench.planner.calibrate import stored_layout
    from quantbench.planner.estimate import Workload, estimate
    from quantbench.planner.presets import preset

    frame = read_results(_floor_store(tmp_path)).frame.assign(model_ref="smollm2-135m")
    figure = charts.quality_vs_memory(frame, "kld_mean", context=2048)
    assert figure.layout.xaxis.title.text == "estimated memory at context 2048, batch 1 (MiB)"
    rtn = _trace(figure, "rtn")
    expected = [estimate(preset("smollm2-135m"), stored_layout("rtn", {"bits": b}, "cpu"),
                         Workload(2048, device="cpu")).total / 2**20 for b in (4, 8)]  # fmt: skip
    assert list(rtn.x) == pytest.approx(expected)
    longer = _trace(charts.quality_vs_memory(frame, "kld_mean", context=8192), "rtn")
    assert all(b > a for a, b in zip(rtn.x, longer.x, strict=True))  # the KV cache grows with the context


def test_estimated_memory_says_why_when_the_planner_knows_no_model(tmp_path):
    figure = charts.quality_vs_memory(read_results(_floor_store(tmp_path)).frame)  # model "tiny": no preset
    assert not figure.data and "no trial has both ppl and estimated memory" in figure.layout.annotations[0].text


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
