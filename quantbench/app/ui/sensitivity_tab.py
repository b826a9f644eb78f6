"""Sensitivity tab: the stored per-unit maps (`quantbench sensitivity`) as a heat map and a bar chart."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from quantbench.app.ui.common import error_box, guarded, read_trials
from quantbench.errors import QuantbenchError
from quantbench.results.sensitivity_charts import bar_chart, heat_map
from quantbench.results.sensitivity_maps import one_map, unit_maps


def map_choices(store: Path) -> list[tuple[str, str]]:
    """(label, trial key) of every stored map, newest last."""
    maps = unit_maps(read_trials(store)[0]).drop_duplicates("trial_key")
    return [(f"{r.model_ref} · {r.method_label} · {r.units} · {r.trial_key}", r.trial_key) for r in maps.itertuples()]


def build(store: Path) -> dict:
    gr.Markdown(
        "Which units a method damages most: each unit (decoder block, or projection with `--units projections`) "
        "quantized alone, KLD against the unquantized model. Make a map with `quantbench sensitivity --method "
        "rtn:bits=4`, and bits per unit under a budget with `quantbench recipe`."
    )
    choice = gr.Dropdown([], label="Map", elem_id="sensitivity-map")
    draw = gr.Button("Draw", variant="primary", elem_id="sensitivity-draw")
    error = error_box("sensitivity-error")
    heat = gr.Plot(label="Heat map", elem_id="sensitivity-heat")
    bars = gr.Plot(label="Per unit", elem_id="sensitivity-bars")

    @guarded(2)
    def charts(key: str | None):
        if not key:
            raise QuantbenchError("no sensitivity map chosen; make one with `quantbench sensitivity`")
        unit_map = one_map(unit_maps(read_trials(store)[0]), key)
        return heat_map(unit_map), bar_chart(unit_map)

    def refresh():
        choices = map_choices(store)
        return gr.update(choices=choices, value=choices[-1][1] if choices else None)

    draw.click(charts, choice, [heat, bars, error], api_name=False)
    return {"load": (refresh, None, choice)}
