"""Results tab: every trial in the store, one row each, filterable and sortable, with the error of failed ones."""

from __future__ import annotations

import math
from pathlib import Path

import gradio as gr
import pandas as pd

from quantbench.app.ui.common import (
    error_box,
    filter_controls,
    guarded,
    make_filters,
    method_choices,
    model_contains,
    read_trials,
)
from quantbench.errors import QuantbenchError
from quantbench.results.columns import display_table, headline
from quantbench.results.index import store_view
from quantbench.results.noise import with_verdicts
from quantbench.runner.trial_log import read_log


def results_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The display table with numbers kept as numbers (so the columns sort numerically), rounded and
    converted the way the catalogue shows them, plus when each trial ran and why a failed one failed."""
    shown = display_table(table).drop(columns=[spec.title for spec in headline(table)])
    for spec in headline(table):
        shown[spec.title] = [None if not text else float(text) for text in map(spec.show, table[spec.metric])]
    shown.insert(1, "created (UTC)", pd.to_datetime(table["created_at"]).dt.strftime("%Y-%m-%d %H:%M").to_numpy())
    shown["error"] = [_first_line(e) for e in table["error"]]
    return shown


def _sent(component: gr.Dataframe, frame: pd.DataFrame) -> dict:
    """`frame` as Gradio sends it to the browser: what its own postprocessing makes of it."""
    return component.postprocess(frame).model_dump()


def _first_line(error: object) -> str:
    if error is None or (isinstance(error, float) and math.isnan(error)):
        return ""
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def log_text(store: Path, key: str) -> str:
    """A trial's log for the log box, or why there is none."""
    if not key.strip():
        return ""
    try:
        return read_log(store, key.strip())
    except QuantbenchError as exc:
        return str(exc)


def build(store: Path) -> dict[str, gr.components.Component]:
    gr.Markdown(
        "Every trial in the results store, newest first; sort with the ⋮ menu of a column header. "
        "**bits/w**: stored bits per weight (scales and unquantized layers included); sizes in MiB "
        "(2^20 bytes); **ppl**: perplexity, lower is better; **quant s**: seconds to quantize; "
        "**eval tok/s**: tokens scored per second; **peak RSS**: the trial's peak process memory; "
        "**vs original**: where the store has a noise floor (a bf16 baseline's KL divergence from fp32), "
        "the trials whose KLD is at or within noise of it. "
        f"Store: `{store}`."
    )
    method, status, model = filter_controls("results")
    refresh = gr.Button("Refresh", variant="primary", elem_id="results-refresh")
    error = error_box("results-error")
    summary = gr.Markdown(elem_id="results-summary")
    table = gr.Dataframe(
        label="Trials",
        interactive=False,
        wrap=True,
        elem_id="results-table",
    )

    with gr.Row():
        log_key = gr.Textbox(label="Trial key", placeholder="select a row, or paste a key", elem_id="results-log-key")
        show_log = gr.Button("Show log", elem_id="results-show-log")
    log_view = gr.Code(label="Trial log: what its libraries printed", interactive=False, elem_id="results-log")

    def selected_log(frame: pd.DataFrame, evt: gr.SelectData) -> tuple[str, str]:
        key = str(frame.iloc[evt.index[0]]["trial_key"]) if isinstance(frame, pd.DataFrame) and len(frame) else ""
        return key, log_text(store, key)

    table.select(selected_log, [table], [log_key, log_view], api_name=False)
    show_log.click(lambda key: log_text(store, key), [log_key], [log_view], api_name="trial_log")
    log_key.submit(lambda key: log_text(store, key), [log_key], [log_view], api_name=False)

    def shown(method_value: str, status_value: str, model_text: str) -> tuple[dict, str, list[str] | None]:
        _, wide_table = read_trials(store, make_filters(method_value, status_value))
        wide_table = model_contains(wide_table, model_text)
        if wide_table.empty:
            return _sent(table, pd.DataFrame()), "No trials match. Start one from the **Run** tab.", None
        all_rows, everything = read_trials(store)
        wide_table = with_verdicts(wide_table, all_rows)
        failed = int((wide_table["status"] == "failed").sum())
        line = f"{len(wide_table)} trials ({failed} failed)."
        return _sent(table, results_frame(wide_table)), line, method_choices(everything)

    @guarded(3)
    def results(method_value: str, status_value: str, model_text: str) -> tuple:
        # Everyone looking at the same filters of the same store gets one table, already in the form
        # Gradio sends (the handlers below skip its postprocessing, which walks every cell).
        key = ("results tab", method_value, status_value, model_text)
        sent, line, choices = store_view(store, key, lambda _: shown(method_value, status_value, model_text))
        return sent, line, gr.update() if choices is None else gr.update(choices=choices)

    inputs = [method, status, model]
    outputs = [table, summary, method, error]
    listen = {"postprocess": False}  # every output is in its sent form: the table by _sent, the rest text
    refresh.click(results, inputs, outputs, api_name="results", **listen)
    for control in (status, method):
        control.change(results, inputs, outputs, api_name=False, **listen)
    model.submit(results, inputs, outputs, api_name=False, **listen)
    return {"method": method, "refresh": refresh, "handler": results, "inputs": inputs, "outputs": outputs,
            "listen": listen}  # fmt: skip
