"""Export tab: the filtered trials written by results/export.py into the app's own export folder
(every path is confined to it), then offered as a download."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import gradio as gr

from quantbench.app.ui.common import error_box, filter_controls, guarded, make_filters, model_contains, read_trials
from quantbench.errors import QuantbenchError
from quantbench.results.charts import CHARTS
from quantbench.results.export import FORMATS, export

SUFFIX = {"md": "md", "csv": "csv", "parquet": "parquet", "latex": "tex", "json": "json", "html": "html", "png": "png"}
DESCRIPTIONS = {
    "csv": "CSV: one row per trial, every metric in raw units (bytes, seconds)",
    "parquet": "Parquet: the same columns, typed",
    "json": "JSON: a list of trial records",
    "md": "Markdown: the headline table, best value per column in bold",
    "latex": "LaTeX: a booktabs tabular of the headline table",
    "html": "HTML: a self-contained report with tables and interactive charts",
    "png": "PNG: one chart as an image (needs kaleido and Chromium)",
}
# Ordered as export.FORMATS, CSV first as the default; a format added there shows under its name.
FORMAT_CHOICES = [(DESCRIPTIONS.get(f, f), f) for f in sorted(FORMATS, key=lambda f: f != "csv")]


def build(store: Path, export_dir: Path) -> dict[str, gr.components.Component]:
    gr.Markdown("Write the trials that match the filters to a file and download it.")
    fmt = gr.Dropdown(
        FORMAT_CHOICES,
        value="csv",
        label="Format",
        info="CSV, Parquet and JSON keep every metric; Markdown and LaTeX the headline columns as shown",
        elem_id="export-format",
    )
    chart = gr.Dropdown(
        list(CHARTS),
        value="pareto",
        label="Chart (PNG only)",
        info="which chart the PNG shows; see the Charts tab",
        visible=False,
        elem_id="export-chart",
    )
    method, status, model = filter_controls("export")
    run = gr.Button("Export", variant="primary", elem_id="export-run")
    error = error_box("export-error")
    summary = gr.Markdown(elem_id="export-summary")
    file = gr.File(label="Download", interactive=False, height=120, elem_id="export-file")

    @guarded(2)
    def write(fmt_value: str, chart_value: str, method_value: str, status_value: str, model_text: str) -> tuple:
        frame, table = read_trials(store, make_filters(method_value, status_value))
        keys = set(model_contains(table, model_text)["trial_key"])
        frame = frame[frame["trial_key"].isin(keys)] if not frame.empty else frame
        if frame.empty:
            raise QuantbenchError("no trials match the filters: nothing to export")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        name = f"quantbench-{stamp}.{SUFFIX.get(fmt_value, fmt_value)}"
        path = export(frame, fmt_value, export_dir, name, chart_value)
        return f"Wrote {len(keys)} trials to `{path.name}` ({path.stat().st_size:,} bytes).", str(path)

    fmt.change(lambda value: gr.update(visible=value == "png"), fmt, chart, api_name=False)
    run.click(write, [fmt, chart, method, status, model], [summary, file, error], api_name="export")
    return {"method": method}
