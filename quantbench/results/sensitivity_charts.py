"""Plotly figures of one sensitivity map: a heat map (blocks × projection types) and a bar chart."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from quantbench.results.sensitivity_maps import heat_grid


def heat_map(unit_map: pd.DataFrame) -> go.Figure:
    """KLD with each unit quantized alone: a row per block, a column per projection type (one column,
    `block`, for a per-block map)."""
    grid = heat_grid(unit_map)
    label = unit_map["method_label"].iloc[0]
    figure = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=[str(c) for c in grid.columns],
            y=[str(i) for i in grid.index],
            colorscale="Reds",
            colorbar={"title": "KLD (nats)"},
            hovertemplate="%{y} %{x}<br>KLD %{z:.6f} nats<extra></extra>",
        )
    )
    figure.update_layout(title=f"Sensitivity of {unit_map['model_ref'].iloc[0]} to {label}, one unit at a time")
    figure.update_yaxes(autorange="reversed", title="block")
    figure.update_xaxes(title="projection")
    return figure


def bar_chart(unit_map: pd.DataFrame) -> go.Figure:
    """Each unit's KLD and top-1 agreement, in model order, with the float floor as a dashed line."""
    figure = go.Figure(
        go.Bar(
            x=unit_map["unit"],
            y=unit_map["kld"],
            customdata=unit_map["top1"],
            hovertemplate="%{x}<br>KLD %{y:.6f} nats<br>top-1 %{customdata:.2f}%<extra></extra>",
            name="KLD with the unit quantized alone",
        )
    )
    figure.add_hline(y=float(unit_map["floor"].iloc[0]), line_dash="dash", annotation_text="float floor")
    figure.update_layout(title=f"KLD per unit under {unit_map['method_label'].iloc[0]}", yaxis_title="KLD (nats)")
    return figure
