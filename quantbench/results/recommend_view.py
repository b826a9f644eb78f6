"""A recommendation as people read it: the same three tables for `quantbench recommend` and the
dashboard's Recommend tab (ranked, excluded, unmeasured), the one-line summary above them, and the
quality-vs-memory chart with the budget drawn on it.

Memory is shown in GiB (2^30 bytes, as the GPU catalog counts cards); each bound as its value and, in
brackets, its margin (room left; negative: how far it is broken).
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from quantbench.planner.gpus import GIB
from quantbench.results.charts import add_budget, quality_vs_size
from quantbench.results.columns import MIB, column
from quantbench.results.recommend import Candidate, Check, Recommendation

RANKING = "smallest memory first among those meeting every bound; ties: better quality on the first bound, then name"


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else ""


def show_check(check: Check) -> str:
    """ "0.0123 (+0.0377)": value and margin, in GiB for memory."""
    if check.unit == "bytes":
        return f"{check.value / GIB:.3f} ({check.margin / GIB:+.3f})"
    return f"{_number(check.value)} ({check.margin:+.4g})"


def summary(rec: Recommendation) -> str:
    work, req = rec.workload, rec.request
    bounds = ", ".join(c.bound for c in _bound_checks(rec)) or "none"
    reference = f"baseline trial {rec.reference[:8]}" if rec.reference else "no baseline trial"
    return (
        f"{req.model} on {rec.budget_name}, {work.device}: context {work.context} × batch {work.batch}, "
        f"KV cache {work.kv_dtype}; bounds: {bounds}; quality against {reference}"
    )


def _bound_checks(rec: Recommendation) -> tuple[Check, ...]:
    """The checks of the candidate with the most of them: every bound asked, in the column order."""
    every = [*rec.ranked, *rec.excluded, *rec.unmeasured]
    return max((c.checks for c in every), key=len, default=())


def _checks_columns(candidates: tuple[Candidate, ...], bounds: list[str]) -> dict[str, list[str]]:
    columns: dict[str, list[str]] = {name: [] for name in bounds}
    for candidate in candidates:
        by_bound = {c.bound: show_check(c) for c in candidate.checks}
        for name in bounds:
            columns[name].append(by_bound.get(name, ""))
    return columns


def ranked_table(rec: Recommendation) -> pd.DataFrame:
    """One row per ranked setting: rank, setting, trial, each bound's value (margin), within-noise flags."""
    bounds = [c.bound for c in _bound_checks(rec)]
    table = pd.DataFrame(
        {
            "#": list(range(1, len(rec.ranked) + 1)),
            "setting": [c.label for c in rec.ranked],
            "trial": [c.trial_key[:8] if c.trial_key else "" for c in rec.ranked],
            **_checks_columns(rec.ranked, bounds),
            "within noise": [", ".join(k.bound for k in c.within_noise) for c in rec.ranked],
            "memory calibration": [c.calibration for c in rec.ranked],
        }
    )
    headers = {c.bound: "memory GiB (margin)" if c.unit == "bytes" else f"{c.bound}: value (margin)"
               for c in _bound_checks(rec)}  # fmt: skip
    return table.rename(columns=headers)


def _why(candidate: Candidate) -> str:
    if candidate.failed:
        return candidate.failed
    return "; ".join(f"{c.bound}: {show_check(c)}" + (" (within noise)" if c.within_noise else "")
                     for c in candidate.broken)  # fmt: skip


def excluded_table(rec: Recommendation) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "setting": [c.label for c in rec.excluded],
            "trial": [c.trial_key[:8] if c.trial_key else "not measured" for c in rec.excluded],
            "memory GiB": [round(c.memory_bytes / GIB, 3) for c in rec.excluded],
            "why": [_why(c) for c in rec.excluded],
        }
    )


def unmeasured_table(rec: Recommendation) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "setting": [c.label for c in rec.unmeasured],
            "memory GiB": [round(c.memory_bytes / GIB, 3) for c in rec.unmeasured],
            "needs": [", ".join(c.missing) if c.missing else "a trial" for c in rec.unmeasured],
        }
    )


# Bound field -> the metric drawn on the chart's y axis, in the order a chart picks the first given.
CHART_METRICS = (("max_kld", "kld_mean"), ("min_top1", "top1_agreement"), ("max_ppl_increase_pct", "perplexity"))
MEMORY_METRIC = "memory_at_context_bytes"


def _bound_line(rec: Recommendation, frame: pd.DataFrame) -> tuple[str, float | None, str]:
    """(y metric, its bound in that metric's unit or None, the bound's name) for the chart."""
    bounds = rec.request.bounds
    for field, metric in CHART_METRICS:
        value = getattr(bounds, field)
        if value is None:
            continue
        if metric == "perplexity":
            base = frame[(frame["trial_key"] == rec.reference) & (frame["metric"] == "perplexity")]["value"]
            return metric, float(base.iloc[0]) * (1 + value / 100), f"max ppl +{value:g}% of the baseline"
        return metric, value, f"{'max' if field.startswith('max') else 'min'} {column(metric).title} {value:g}"
    return "perplexity", None, ""


def budget_chart(rec: Recommendation, frame: pd.DataFrame) -> go.Figure:
    """Quality against the planner's memory at the request's workload for every measured setting (the
    Pareto front starred), with the memory budget and the first quality bound drawn on it."""
    measured = {c.trial_key: c.memory_bytes for c in (*rec.ranked, *rec.excluded, *rec.unmeasured)
                if c.trial_key and not c.failed}  # fmt: skip
    rows = frame[frame["trial_key"].isin(list(measured))]
    planned = rows.drop_duplicates("trial_key").assign(
        eval="planner", metric=MEMORY_METRIC, protocol_json="{}", corpus="", corpus_hash="", series=None, note=""
    )
    planned["value"] = planned["trial_key"].map(measured).astype(float)
    metric, bound, bound_name = _bound_line(rec, frame)
    figure = quality_vs_size(pd.concat([rows, planned], ignore_index=True), metric, MEMORY_METRIC)
    work = rec.workload
    figure.update_layout(
        title=f"{column(metric).title} vs estimated memory at context {work.context} × batch {work.batch}",
        xaxis_title=f"estimated peak memory, {work.device} (MiB)",
        legend={"orientation": "h", "yanchor": "top", "y": -0.2},  # group names are long: below, not beside
    )
    return add_budget(figure, rec.budget_bytes / MIB, f"memory budget: {rec.budget_name}", bound, bound_name)
