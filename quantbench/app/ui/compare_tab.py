"""Compare tab: two or more trials side by side with deltas against a reference, better and worse
values highlighted. Comparability (same model fingerprint, corpus and protocol) is checked by
results/compare.py, whose message is shown when the selection mixes incomparable trials."""

from __future__ import annotations

import html
import math
from pathlib import Path

import gradio as gr

from quantbench.app.ui.common import error_box, guarded, read_trials, trial_choices
from quantbench.errors import QuantbenchError
from quantbench.results.columns import column
from quantbench.results.compare import PAIRED, RATIOS, Comparison, compare, default_keys, paired_name

AUTO = ""  # the reference choice that lets compare() pick the model's baseline
AUTO_CHOICE = ("automatic: the model's baseline trial", AUTO)


def direction(name: str) -> str:
    """Which way is better for a row of the comparison: "lower", "higher" or "" (not ranked)."""
    if name.startswith(("Δ ", "Δ% ")):
        return column(name.split(" ", 1)[1]).better
    if name.split(" @")[0] in RATIOS.values():
        return "higher"  # ratios are oriented so that more than 1× is better
    if name in ("trial", "trial_key", "device") or name.endswith("beyond stderr"):
        return ""
    return column(name).better


def _neutral(name: str, reference: float) -> float:
    """The value of a row at which a trial is neither better nor worse than the reference."""
    if name.startswith("Δ"):
        return 0.0
    if name.split(" @")[0] in RATIOS.values():
        return 1.0
    return reference


def comparison_html(comparison: Comparison) -> str:
    """Quantities as rows, trials as columns (the reference first); a cell is green where the trial
    does better than the reference and red where it does worse."""
    table = comparison.table
    names = [n for n in comparison.renderers if n != "trial"]
    head = "".join(
        f"<th>{html.escape(str(t))}{' (reference)' if i == 0 else ''}</th>" for i, t in enumerate(table["trial"])
    )
    rows = []
    for name in names:
        better, render = direction(name), comparison.renderers[name]
        values = table[name].tolist()
        # A paired test that finds no difference outranks how the numbers look: within noise stays plain.
        paired = table[paired_name(name)].tolist() if name in PAIRED and paired_name(name) in table else None
        cells = []
        for i, value in enumerate(values):
            css = ""
            within_noise = paired is not None and paired[i] is not None and not paired[i].significant
            # Colour only differences that show: equal-looking values stay plain.
            if (
                i > 0
                and better
                and not within_noise
                and _has(value)
                and _has(values[0])
                and not isinstance(value, bool)
            ):
                neutral = _neutral(name, values[0])
                gain = 0.0 if render(value) == render(neutral) else value - neutral
                gain = -gain if better == "lower" else gain
                css = "qb-better" if gain > 1e-12 else "qb-worse" if gain < -1e-12 else ""
            cells.append(f'<td class="{css}">{html.escape(render(value)) if _has(value) else ""}</td>')
        rows.append(f"<tr><th>{html.escape(column(name).title)}</th>{''.join(cells)}</tr>")
    return (
        '<table class="qb-compare" id="compare-result"><thead><tr><th>quantity</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _has(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def build(store: Path) -> dict[str, gr.components.Component]:
    gr.Markdown(
        "Pick two or more trials of the same model, corpus and eval settings. Each is compared with "
        "the reference: **Δ** is trial − reference, **×** ratios above 1 mean smaller or faster. "
        '<span class="qb-better">green</span>: better than the reference, '
        '<span class="qb-worse">red</span>: worse.'
    )
    with gr.Row():
        trials = gr.Dropdown(
            [],
            multiselect=True,
            label="Trials to compare",
            info="key · method · model · status; choose two or more",
            elem_id="compare-trials",
            scale=3,
        )
        reference = gr.Dropdown(
            [AUTO_CHOICE],
            value=AUTO,
            label="Reference",
            info="the trial every delta is measured against; automatic picks the comparable baseline",
            elem_id="compare-reference",
            scale=2,
        )
    with gr.Row():
        reload = gr.Button("Reload trial list", elem_id="compare-reload")
        run = gr.Button("Compare", variant="primary", elem_id="compare-run")
    error = error_box("compare-error")
    reference_line = gr.Markdown(elem_id="compare-reference-line")
    result = gr.HTML(elem_id="compare-table")

    @guarded(4)
    def opening(chosen: list[str] | None) -> tuple:
        """New trial choices; while nothing is chosen, the default view (see `default_keys`)."""
        frame, table = read_trials(store)
        options = trial_choices(table)
        updates = gr.update(choices=options), gr.update(choices=[AUTO_CHOICE, *options])
        if chosen:
            return (*updates, gr.update(), gr.update())
        keys = default_keys(frame)
        if not keys:
            why = "No trials yet." if table.empty else "No ok trial of the newest model has a comparable baseline."
            return (*updates, f"{why} Pick trials above.", "")
        comparison = compare(frame, keys)
        updates = gr.update(choices=options, value=keys), updates[1]
        return (*updates, _reference_line(comparison, default=True), comparison_html(comparison))

    @guarded(2)
    def run_compare(keys: list[str] | None, ref: str | None) -> tuple:
        if not keys or len(keys) < 2:
            raise QuantbenchError("choose at least two trials to compare")
        frame, _ = read_trials(store)
        comparison = compare(frame, list(keys), ref or None)
        return _reference_line(comparison), comparison_html(comparison)

    outputs = [trials, reference, reference_line, result, error]
    reload.click(opening, trials, outputs, api_name=False)
    run.click(run_compare, [trials, reference], [reference_line, result, error], api_name="compare")
    return {"load": (opening, [trials], outputs)}


def _reference_line(comparison: Comparison, default: bool = False) -> str:
    label = comparison.table["trial"].iloc[0]
    if not default:
        return f"Reference: **{label}**"
    return (
        f"Every ok trial of the newest model ({len(comparison.table)}) against its baseline **{label}**; "
        "pick trials above to compare others."
    )
