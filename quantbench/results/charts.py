"""Plotly figures over the store: quality vs size with the Pareto front, quality vs bits,
latency / throughput bars, memory bars.

Every figure takes tidy rows (one per metric, as `query` returns them) and is a pure function
of them: points and traces are ordered by comparability group, then trial key, so the same
rows give the same figure JSON whatever order the store returned them in. Trials that do not
compare (another model, corpus or protocol; another machine for speed and memory) are drawn
as separate traces whose legend names the group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from quantbench.results.columns import MIB, column, natural_key
from quantbench.results.compare import comparability_groups
from quantbench.results.query import wide
from quantbench.trackers import names

TEMPLATE = "plotly_white"


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """Which points are not dominated when both x and y are better lower.

    A point is dominated when another is no worse in both and strictly better in one; equal
    points do not dominate each other, so ties on the front all stay on it. NaN is never on it.
    """
    on_front = [False] * len(xs)
    order = sorted(
        (i for i in range(len(xs)) if not (math.isnan(xs[i]) or math.isnan(ys[i]))), key=lambda i: (xs[i], ys[i])
    )
    best: tuple[float, float] | None = None  # the front point with the lowest y so far
    for i in order:
        if best is None or ys[i] < best[1] or (xs[i], ys[i]) == best:
            on_front[i] = True
            best = (xs[i], ys[i])
    return on_front


def _hover(table: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The full configuration of each trial, for hover text (built column-wise: stores are large)."""
    text = (
        "<b>" + table["method_label"].astype(str) + "</b><br>trial " + table["trial_key"].astype(str)
        + "<br>model " + table["model_ref"].astype(str) + "<br>device " + table["device"].astype(str)
        + " · kernel " + table["kernel"].astype(str) + "<br>" + table["hardware"].astype(str)
    )  # fmt: skip
    for metric in metrics:
        if metric in table:
            spec = column(metric)
            text = text + f"<br>{spec.title} " + table[metric].map(spec.show).astype(str)
    return text.tolist()


def _grouped(frame: pd.DataFrame, metric: str, by_hardware: bool = False) -> list[tuple[str, pd.DataFrame]]:
    """(group label, wide rows sorted by trial key) for the ok trials that measured `metric`."""
    table = wide(frame[frame["status"] == "ok"]) if not frame.empty else wide(frame)
    if metric not in table:
        return []
    groups = comparability_groups(frame, metric, by_hardware)
    table = table[table[metric].notna()].sort_values("trial_key")
    table = table.assign(group=table["trial_key"].map(groups))
    return [(label, rows) for label, rows in table.groupby("group", sort=True)]


def _empty(title: str, why: str) -> go.Figure:
    figure = go.Figure(
        layout={"title": title, "template": TEMPLATE, "xaxis": {"visible": False}, "yaxis": {"visible": False}}
    )
    figure.add_annotation(text=why, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return figure


def quality_vs_size(frame: pd.DataFrame, quality: str = "perplexity", size: str = "weight_bytes") -> go.Figure:
    """Quality against weight size per comparability group: dominated trials as dots, the Pareto
    front (trials no other beats on both) as stars joined by a dotted line."""
    title = f"{column(quality).title} vs {column(size).title}"
    groups = _grouped(frame, quality)
    if not groups:
        return _empty(title, f"no trial measured {quality}")
    higher = column(quality).better == "higher"
    figure = go.Figure(layout={"title": title, "template": TEMPLATE})
    metrics = [quality, size, "bits_per_weight"]
    for label, rows in groups:
        rows = rows[rows[size].notna()]
        rows = rows.assign(x=rows[size] / MIB if size.endswith("_bytes") else rows[size])
        front = pd.Series(pareto_front(rows["x"].tolist(), (-rows[quality] if higher else rows[quality]).tolist()))
        off, on = rows[~front.to_numpy()], rows[front.to_numpy()].sort_values(["x", quality, "trial_key"])
        figure.add_scatter(
            x=off["x"].tolist(), y=off[quality].tolist(), mode="markers", name=label,
            legendgroup=label, hovertext=_hover(off, metrics), hoverinfo="text", marker={"symbol": "circle", "size": 8},
        )  # fmt: skip
        figure.add_scatter(
            x=on["x"].tolist(), y=on[quality].tolist(), mode="lines+markers", name=f"Pareto front · {label}",
            legendgroup=label, hovertext=_hover(on, metrics), hoverinfo="text", line={"dash": "dot"},
            marker={"symbol": "star", "size": 12},
        )  # fmt: skip
    x_unit = "MiB" if size.endswith("_bytes") else column(size).title
    figure.update_layout(xaxis_title=f"{column(size).metric} ({x_unit})", yaxis_title=column(quality).title)
    return figure


def quality_vs_bits(frame: pd.DataFrame, quality: str = "perplexity") -> go.Figure:
    """Quality against effective bits per weight, one line per method family and group."""
    title = f"{column(quality).title} vs bits per weight"
    groups = _grouped(frame, quality)
    if not groups:
        return _empty(title, f"no trial measured {quality}")
    figure = go.Figure(layout={"title": title, "template": TEMPLATE})
    for label, rows in groups:
        for method, family in rows.groupby("method", sort=True):
            family = family[family["bits_per_weight"].notna()].sort_values(["bits_per_weight", "trial_key"])
            figure.add_scatter(
                x=family["bits_per_weight"].tolist(), y=family[quality].tolist(), mode="lines+markers",
                name=f"{method} · {label}", legendgroup=label, hoverinfo="text",
                hovertext=_hover(family, [quality, "bits_per_weight"]),
            )  # fmt: skip
    figure.update_layout(xaxis_title="effective bits per weight", yaxis_title=column(quality).title)
    return figure


def metric_bars(frame: pd.DataFrame, metrics: list[str], title: str, unit: str, by_hardware: bool = True) -> go.Figure:
    """Grouped bars: one bar per trial for each metric (and `@variant` of it) present, all in
    `unit` (bytes are shown in MiB).

    The x axis has two levels, comparability group then method, so bars of trials measured on
    different machines or protocols sit apart under their own label.
    """
    table = wide(frame[frame["status"] == "ok"]) if not frame.empty else wide(frame)
    names = sorted((str(c) for c in table.columns if table[c].notna().any()), key=natural_key)
    series = [c for m in metrics for c in names if c == m or c.startswith(m + "@")]
    if not series:
        return _empty(title, f"no trial measured {' or '.join(metrics)}")
    # One group label per trial (from the first series it has), so its bars share one x slot.
    groups: dict[str, str] = {}
    for name in series:
        for key, label in comparability_groups(frame, name, by_hardware).items():
            groups.setdefault(key, label)
    table = table.assign(group=table["trial_key"].map(groups))
    figure = go.Figure(layout={"title": title, "template": TEMPLATE, "barmode": "group"})
    for name in series:
        rows = table[table[name].notna()]
        rows = rows.sort_values(["group", "method_label", "trial_key"])
        scale = MIB if name.split("@")[0].endswith("_bytes") else 1
        methods = [f"{m} ({k[:6]})" for m, k in zip(rows["method_label"], rows["trial_key"], strict=True)]
        figure.add_bar(
            x=[rows["group"].tolist(), methods], y=(rows[name] / scale).tolist(), name=column(name).title,
            hoverinfo="text", hovertext=_hover(rows, [name]),
        )  # fmt: skip
    figure.update_layout(yaxis_title=unit)
    return figure


def throughput_bars(frame: pd.DataFrame) -> go.Figure:
    return metric_bars(frame, ["decode_tokens_per_second"], "Decode throughput per batch size", "tokens/s")


def prefill_bars(frame: pd.DataFrame) -> go.Figure:
    return metric_bars(frame, ["prefill_seconds"], "Prefill time (time to first token) per prompt length", "s")


def memory_bars(frame: pd.DataFrame) -> go.Figure:
    metrics = [names.WEIGHT_BYTES, names.PEAK_RSS, names.INFERENCE_CUDA_MAX_ALLOCATED]
    return metric_bars(frame, metrics, "Weights and peak memory", "MiB")


CHARTS = {
    "pareto": quality_vs_size,
    "bits": quality_vs_bits,
    "throughput": throughput_bars,
    "prefill": prefill_bars,
    "memory": memory_bars,
}


def add_budget(
    figure: go.Figure, memory_mib: float, memory_label: str, bound: float | None = None, bound_label: str = ""
) -> go.Figure:
    """Draw a memory budget (a vertical line, x in MiB) and a quality bound (a horizontal line) on a
    quality-vs-memory figure, as line traces spanning the points and the budget, so the legend names them."""
    xs = [x for trace in figure.data for x in (trace.x or ()) if x is not None]
    ys = [y for trace in figure.data for y in (trace.y or ()) if y is not None]
    ys += [] if bound is None else [bound]
    x_span, y_span = [min([*xs, memory_mib]), max([*xs, memory_mib])], [min(ys, default=0), max(ys, default=1)]
    style = {"dash": "dash", "color": "#c62828", "width": 2}
    figure.add_scatter(x=[memory_mib, memory_mib], y=y_span, mode="lines", name=memory_label, line=style,
                       hoverinfo="name")  # fmt: skip
    if bound is not None:
        figure.add_scatter(x=x_span, y=[bound, bound], mode="lines", name=bound_label,
                           line={**style, "dash": "dot"}, hoverinfo="name")  # fmt: skip
    return figure
