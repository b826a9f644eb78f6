"""Charts tab: the Plotly figures of results/charts.py over the filtered store. Trials that do not
compare (another model, corpus or protocol; another machine for speed and memory) are drawn as
separate traces whose legend names their comparability group."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from quantbench.app.ui.common import error_box, filter_controls, guarded, make_filters, model_contains, read_trials
from quantbench.errors import QuantbenchError
from quantbench.results.charts import CHARTS

CHART_CHOICES = [
    ("Quality vs size: perplexity against weight MiB, Pareto front starred", "pareto"),
    ("Quality vs bits: perplexity against effective bits per weight", "bits"),
    ("Throughput: decode tokens/s per batch size (latency eval)", "throughput"),
    ("Prefill: time to first token per prompt length (latency eval)", "prefill"),
    ("Memory: weight MiB and peak RSS / CUDA MiB", "memory"),
]


def build(store: Path) -> dict[str, gr.components.Component]:
    gr.Markdown(
        "Charts of the ok trials that match the filters. Hover a point for its full configuration. "
        "Trials measured on another model, corpus, protocol (or machine, for speed and memory) form "
        "their own group, named in the legend: compare points only within a group. Throughput and "
        "prefill need the **latency** eval."
    )
    kind = gr.Dropdown(
        CHART_CHOICES,
        value="pareto",
        label="Chart",
        info="lower perplexity and smaller size are better",
        elem_id="chart-kind",
    )
    method, _, model = filter_controls("chart", with_status=False)  # charts draw ok trials only
    draw = gr.Button("Draw chart", variant="primary", elem_id="chart-draw")
    error = error_box("chart-error")
    plot = gr.Plot(label="Chart", elem_id="chart")

    @guarded(1)
    def chart(kind_value: str, method_value: str, model_text: str) -> tuple:
        if kind_value not in CHARTS:
            raise QuantbenchError(f"unknown chart {kind_value!r}; valid charts: {', '.join(CHARTS)}")
        frame, table = read_trials(store, make_filters(method_value, "ok"))
        keys = set(model_contains(table, model_text)["trial_key"])
        return (CHARTS[kind_value](frame[frame["trial_key"].isin(keys)] if not frame.empty else frame),)

    inputs, outputs = [kind, method, model], [plot, error]
    draw.click(chart, inputs, outputs, api_name="chart")
    kind.change(chart, inputs, outputs, api_name=False)
    return {"load": (chart, inputs, outputs), "method": method}
