"""Plotly figures over the store: quality (perplexity, mean KLD or top-1 agreement) vs measured
size or vs the planner's estimated memory at a context, with the Pareto front and the noise floor;
quality vs bits; latency / throughput bars, memory bars.

The quality scatters are meant to be read without hovering: one colour per method family, each
point labelled with its short label (bits, group), ± one standard error bars. They are plain
figures with MiB on x, so a caller can draw more on them (a memory budget as a vertical line).

Every figure takes tidy rows (one per metric, as `query` returns them) and is a pure function
of them: points and traces are ordered by comparability group, then trial key, so the same
rows give the same figure JSON whatever order the store returned them in. Trials that do not
compare (another model, corpus or protocol; another machine for speed and memory) are drawn
as separate traces whose legend names the group.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from quantbench.results.columns import MIB, column, natural_key
from quantbench.results.compare import comparability_groups
from quantbench.results.footprint import estimated_memory
from quantbench.results.noise import floors_in
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


def _hover(table: pd.DataFrame, metrics: list[str]) -> dict:
    """Trace arguments that show each trial's full configuration on hover: a hovertemplate holding the
    words every point of the trace shares, and per point only what differs (`customdata`). Per-point
    hover text repeated those words thousands of times: most of a large store's figure JSON, which the
    dashboard sends on every Charts request."""
    fields = [
        ("<b>{}</b>", table["method_label"]), ("<br>trial {}", table["trial_key"]),
        ("<br>model {}", table["model_ref"]), ("<br>device {}", table["device"]), (" · kernel {}", table["kernel"]),
        ("<br>{}", table["hardware"]),
    ]  # fmt: skip
    fields += [(f"<br>{column(m).title} {{}}", table[m].map(column(m).show)) for m in metrics if m in table]
    template, varying = "", []
    for form, values in fields:
        values = values.astype(str)
        shared = values.iloc[0] if len(values) and (values == values.iloc[0]).all() else None
        if shared is not None and "%" not in shared:  # "%{" would start a placeholder
            template += form.format(shared)
        else:
            template += form.format(f"%{{customdata[{len(varying)}]}}")
            varying.append(values.tolist())
    customdata = [list(point) for point in zip(*varying, strict=True)] if varying else None
    return {"hovertemplate": template + "<extra></extra>", "customdata": customdata}


def _ok_trials(frame: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The wide table of the ok trials and each trial's comparability group for `metric`."""
    table = wide(frame[frame["status"] == "ok"]) if not frame.empty else wide(frame)
    return table, comparability_groups(frame, metric) if metric in table else {}


def _grouped(table: pd.DataFrame, groups: dict[str, str], metric: str) -> list[tuple[str, pd.DataFrame]]:
    """(group label, wide rows sorted by trial key) for the trials of `_ok_trials` that measured `metric`."""
    if metric not in table:
        return []
    table = table[table[metric].notna()].sort_values("trial_key")
    table = table.assign(group=table["trial_key"].map(groups))
    return [(label, rows) for label, rows in table.groupby("group", sort=True)]


def _empty(title: str, why: str) -> go.Figure:
    figure = go.Figure(
        layout={"title": title, "template": TEMPLATE, "xaxis": {"visible": False}, "yaxis": {"visible": False}}
    )
    figure.add_annotation(text=why, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return figure


# One colour per method family, fixed so a family looks the same in every chart and every store
# (registry order would shift whenever a backend is added); other families hash into a palette.
FAMILY_COLOURS = {
    "baseline": "#444444", "rtn": "#1F77B4", "triton": "#17BECF", "bnb": "#FF7F0E", "hqq": "#2CA02C",
    "quanto": "#D62728", "torchao": "#9467BD", "gptq": "#8C564B", "awq": "#E377C2", "gguf": "#BCBD22",
    "dynamic": "#7F7F7F", "llmcompressor": "#AF0038", "qat": "#00A08B",
}  # fmt: skip
OTHER_COLOURS = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B")
FLOOR_COLOUR = "#888888"
DEFAULT_CONTEXT = 4096  # tokens, for the estimated-memory chart when the caller names none
# Words of a method label's parameters shortened for point labels: "rtn:bits=4,group_size=64" -> "4b g64".
_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_SHORT = {
    "bits": "{}b", "nbits": "{}b", "group_size": "g{}", "compute_dtype": "{}", "dtype": "{}", "weights": "{}",
    "quant_type": "{}", "symmetric": "", "source": "{}",
}  # fmt: skip


def family_colour(method: str) -> str:
    known = FAMILY_COLOURS.get(method)
    return known or OTHER_COLOURS[zlib.crc32(method.encode()) % len(OTHER_COLOURS)]


def short_label(method_label: str) -> str:
    """A point's label: the method's parameters in a few characters ("4b g64", "bf16", "8b nf4"),
    since the colour already names the family."""
    _, _, params = str(method_label).partition(":")
    words = []
    for item in filter(None, params.split(",")):
        key, _, value = item.partition("=")
        form = _SHORT.get(key, f"{key}={{}}")
        if form:
            words.append(form.format(_DTYPES.get(value, value)))
    return " ".join(words) or str(method_label).partition(":")[0]


def _in_mib(metric: str, values: pd.Series) -> pd.Series:
    return values / MIB if metric.endswith("_bytes") else values


def _scatter(frame: pd.DataFrame, quality: str, x: pd.Series, x_title: str, title: str) -> go.Figure:
    """Quality against `x` (per trial key, in display units) per comparability group of `quality`:
    one trace per method family in its colour, each point labelled with its short label, error bars
    from the stored standard errors, the Pareto front (points no other beats on both) as stars
    joined by a dotted line, and the noise floor as a dashed line where the group has one."""
    # One wide table and one grouping serve the points and the noise floors (stores run to 100k rows).
    table, group_of = _ok_trials(frame, quality)
    groups = _grouped(table, group_of, quality)
    if not groups:
        return _empty(title, f"no trial measured {quality}")
    higher = column(quality).better == "higher"
    floors = floors_in(table, group_of, quality)
    figure = go.Figure(layout={"title": title, "template": TEMPLATE})
    metrics = [quality, names.WEIGHT_BYTES, "bits_per_weight"]
    stderr = f"{quality}_stderr"
    for label, rows in groups:
        rows = rows.assign(x=rows["trial_key"].map(x)).dropna(subset=["x"])
        if rows.empty:
            continue
        suffix = f" · {label}" if len(groups) > 1 else ""
        front = np.array(pareto_front(rows["x"].tolist(), (-rows[quality] if higher else rows[quality]).tolist()))
        rows = rows.assign(on_front=front)
        for method, family in rows.groupby("method", sort=True):
            errors = family[stderr].tolist() if stderr in family and family[stderr].notna().any() else None
            figure.add_scatter(
                x=family["x"].tolist(), y=family[quality].tolist(), mode="markers+text", name=f"{method}{suffix}",
                legendgroup=f"{method}{suffix}", text=[short_label(m) for m in family["method_label"]],
                textposition="top center", **_hover(family, metrics),
                marker={"color": family_colour(method), "size": 10,
                        "symbol": ["star" if f else "circle" for f in family["on_front"]]},
                error_y={"type": "data", "array": errors, "visible": True} if errors else None,
            )  # fmt: skip
        on = rows[rows["on_front"]].sort_values(["x", quality, "trial_key"])
        figure.add_scatter(
            x=on["x"].tolist(), y=on[quality].tolist(), mode="lines", name=f"Pareto front{suffix}",
            line={"dash": "dot", "color": FLOOR_COLOUR}, hoverinfo="skip",
        )  # fmt: skip
        floor = floors.get(label)
        if floor is not None:
            figure.add_scatter(
                x=[rows["x"].min(), rows["x"].max()], y=[floor.value, floor.value], mode="lines",
                name=f"noise floor: {short_label(floor.method_label)} vs fp32{suffix}",
                line={"dash": "dash", "color": FLOOR_COLOUR}, hoverinfo="text",
                hovertext=f"{column(quality).title} of {floor.method_label} ({floor.trial_key[:8]}): "
                f"{column(quality).show(floor.value)}; below it a result is indistinguishable from the original",
            )  # fmt: skip
    if not figure.data:
        return _empty(title, f"no trial has both {column(quality).title} and {x_title}")
    figure.update_layout(xaxis_title=x_title, yaxis_title=column(quality).title)
    return figure


def quality_vs_size(frame: pd.DataFrame, quality: str = "perplexity", size: str = "weight_bytes") -> go.Figure:
    """Quality against a measured size (weight bytes by default); see `_scatter`."""
    table = wide(frame)
    x = pd.Series(dtype=float) if size not in table else _in_mib(size, table.set_index("trial_key")[size])
    x_unit = "MiB" if size.endswith("_bytes") else column(size).title
    title = f"{column(quality).title} vs {column(size).title}"
    return _scatter(frame, quality, x, f"{column(size).metric} ({x_unit})", title)


def quality_vs_memory(
    frame: pd.DataFrame, quality: str = "perplexity", context: int = DEFAULT_CONTEXT, batch: int = 1
) -> go.Figure:
    """Quality against the planner's estimate of the memory each trial's format needs to serve
    `batch` sequences of `context` tokens on its device (weights, KV cache, activations, runtime);
    trials the planner cannot price (an unknown model or method) are left out."""
    x = estimated_memory(frame, context, batch) / MIB
    title = f"{column(quality).title} vs estimated memory at {context} tokens × {batch}"
    return _scatter(frame, quality, x, f"estimated memory at context {context}, batch {batch} (MiB)", title)


def quality_vs_bits(frame: pd.DataFrame, quality: str = "perplexity") -> go.Figure:
    """Quality against effective bits per weight, one line per method family and group."""
    title = f"{column(quality).title} vs bits per weight"
    groups = _grouped(*_ok_trials(frame, quality), quality)
    if not groups:
        return _empty(title, f"no trial measured {quality}")
    figure = go.Figure(layout={"title": title, "template": TEMPLATE})
    for label, rows in groups:
        for method, family in rows.groupby("method", sort=True):
            family = family[family["bits_per_weight"].notna()].sort_values(["bits_per_weight", "trial_key"])
            figure.add_scatter(
                x=family["bits_per_weight"].tolist(), y=family[quality].tolist(), mode="lines+markers+text",
                name=f"{method} · {label}", legendgroup=label, **_hover(family, [quality, "bits_per_weight"]),
                marker={"color": family_colour(method)},
                line={"color": family_colour(method)}, text=[short_label(m) for m in family["method_label"]],
                textposition="top center",
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
            **_hover(rows, [name]),
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
    "footprint": quality_vs_memory,
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
