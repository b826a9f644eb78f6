"""Charts tab: the Plotly figures of results/charts.py over the filtered store, with the quality
metric on the y axis and the context of the estimated-memory chart chosen by the user. Trials that
do not compare (another model, corpus or protocol; another machine for speed and memory) are drawn
as separate traces whose legend names their comparability group."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio.components.plot import PlotData

from quantbench.app.ui.common import error_box, filter_controls, guarded, make_filters, model_contains, read_trials
from quantbench.errors import QuantbenchError
from quantbench.results.charts import CHARTS, DEFAULT_CONTEXT, quality_vs_memory
from quantbench.results.index import store_view
from quantbench.results.store import StoreContents

CHART_CHOICES = [
    ("Quality vs size: quality against weight MiB, Pareto front starred", "pareto"),
    ("Quality vs memory at a context: quality against the planner's estimate (weights, KV cache, ...)", "footprint"),
    ("Quality vs bits: quality against effective bits per weight", "bits"),
    ("Throughput: decode tokens/s per batch size (latency eval)", "throughput"),
    ("Prefill: time to first token per prompt length (latency eval)", "prefill"),
    ("Memory: weight MiB and peak RSS / CUDA MiB", "memory"),
]
QUALITY_CHARTS = {"pareto", "bits", "footprint"}  # the charts the quality selector applies to
QUALITY_CHOICES = [
    ("perplexity (lower is better)", "perplexity"),
    ("mean KL divergence from the original, nats (lower is better; needs the divergence eval)", "kld_mean"),
    ("top-1 agreement with the original, % (higher is better; needs the divergence eval)", "top1_agreement"),
]


def build(store: Path) -> dict[str, gr.components.Component]:
    gr.Markdown(
        "Charts of the ok trials that match the filters. Each colour is a method family, each point is "
        "labelled with its bits and group size, bars are ± one standard error, and the dashed **noise floor** "
        "is the half-precision baseline (bf16 vs fp32): a point on or under it is indistinguishable from the "
        "original. Hover a point for its full configuration. Trials measured on another model, corpus, "
        "protocol (or machine, for speed and memory) form their own group, named in the legend: compare "
        "points only within a group. Throughput and prefill need the **latency** eval."
    )
    with gr.Row():
        kind = gr.Dropdown(CHART_CHOICES, value="pareto", label="Chart", elem_id="chart-kind", scale=3)
        quality = gr.Dropdown(
            QUALITY_CHOICES,
            value="perplexity",
            label="Quality (y axis)",
            info="for the quality charts",
            elem_id="chart-quality",
            scale=2,
        )
        context = gr.Number(
            DEFAULT_CONTEXT,
            precision=0,
            minimum=1,
            label="Context (tokens)",
            info="for quality vs memory: the planner's estimate at this context, batch 1",
            elem_id="chart-context",
            scale=1,
        )
    method, _, model = filter_controls("chart", with_status=False)  # charts draw ok trials only
    draw = gr.Button("Draw chart", variant="primary", elem_id="chart-draw")
    error = error_box("chart-error")
    plot = gr.Plot(label="Chart", elem_id="chart")

    @guarded(1)
    def chart(kind_value: str, quality_value: str, context_value: float | None, method_value: str, model_text: str):
        if kind_value not in CHARTS:
            raise QuantbenchError(f"unknown chart {kind_value!r}; valid charts: {', '.join(CHARTS)}")
        if quality_value not in dict((v, k) for k, v in QUALITY_CHOICES):
            valid = ", ".join(v for _, v in QUALITY_CHOICES)
            raise QuantbenchError(f"unknown quality {quality_value!r}; valid: {valid}")
        if kind_value == "footprint" and (
            context_value is None or context_value < 1 or context_value != int(context_value)
        ):
            raise QuantbenchError(f"context must be a positive whole number of tokens, got {context_value!r}")

        def figure(_: StoreContents) -> PlotData:
            frame, table = read_trials(store, make_filters(method_value, "ok"))
            keys = set(model_contains(table, model_text)["trial_key"])
            frame = frame[frame["trial_key"].isin(keys)] if not frame.empty else frame
            if kind_value == "footprint":
                drawn = quality_vs_memory(frame, quality_value, int(context_value))
            elif kind_value in QUALITY_CHARTS:
                drawn = CHARTS[kind_value](frame, quality_value)
            else:
                drawn = CHARTS[kind_value](frame)
            # Serialized once here rather than by gr.Plot for every request (it passes PlotData through).
            return PlotData(type="plotly", plot=drawn.to_json())

        # Everyone drawing the same chart of the same store gets one serialized figure.
        tokens = int(context_value) if kind_value == "footprint" else None
        return (store_view(store, ("chart", kind_value, quality_value, tokens, method_value, model_text), figure),)

    inputs, outputs = [kind, quality, context, method, model], [plot, error]
    draw.click(chart, inputs, outputs, api_name="chart")
    for control in (kind, quality):
        control.change(chart, inputs, outputs, api_name=False)
    return {"load": (chart, inputs, outputs), "method": method}
