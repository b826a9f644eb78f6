"""How metrics are shown to people: title, display unit, and which direction is better.

One catalogue for the CLI table, the comparison, the charts and the exports, so a metric has
the same title and unit everywhere. The store keeps SI units (bytes, seconds); conversion to
MiB happens only here, for display.

Metric names produced by evals that this catalogue relies on (agreed with their authors):
- perplexity: `perplexity`, its standard error `perplexity_stderr`;
- divergence: `kld_mean` (nats), `top1_agreement` (percent), each with `<metric>_stderr`;
- tasks: `task:<task>:<measure>` and its standard error `task:<task>:<measure>_stderr`, a
  non-default lm-eval filter appended as `@<filter>`, e.g. `task:hellaswag:acc`,
  `task:hellaswag:acc_stderr`; `task:<task>:samples` counts the examples;
- latency: `decode_tokens_per_second@batch=<n>`, `prefill_seconds@len=<tokens>` (a metric
  measured at several settings appends `@<param>=<value>`; the bare name works too);
- memory (trackers/names.py): `peak_rss_bytes` (each eval's; the trial's peak is the largest),
  `inference_cuda_max_allocated_bytes` (latency eval, CUDA).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from quantbench.trackers import names

MIB = 2**20
# A trial's verdict against the noise floor (results/noise.py), a text column of the wide table.
VERDICT_COLUMN = "vs_original"


@dataclass(frozen=True)
class Column:
    metric: str
    title: str
    render: Callable[[float], str]
    better: str = ""  # "lower", "higher" or "" (no ranking, e.g. token counts)

    def show(self, value: float) -> str:
        return "" if value is None or math.isnan(value) else self.render(value)


def _fixed(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:.{digits}f}"


def _mib(v: float) -> str:
    return f"{v / MIB:.1f}"


# Display order of the headline columns; metrics not listed here are still exported raw.
CATALOGUE = [
    Column("bits_per_weight", "bits/w", _fixed(2), "lower"),
    Column(names.WEIGHT_BYTES, "weights MiB", _mib, "lower"),
    Column(names.QUANTIZED_WEIGHT_FRACTION, "quantized %", lambda v: f"{100 * v:.1f}", "higher"),
    Column("perplexity", "ppl", _fixed(3), "lower"),
    # Divergence beside perplexity: what a newcomer reads first is how far each method moved the model.
    Column("kld_mean", "KLD", _fixed(4), "lower"),
    Column("top1_agreement", "top-1 agree %", _fixed(2), "higher"),
    Column("bits_per_byte", "bits/byte", _fixed(4), "lower"),
    Column("word_perplexity", "word ppl", _fixed(2), "lower"),
    Column("decode_tokens_per_second", "decode tok/s", _fixed(1), "higher"),
    Column("prefill_seconds", "prefill s", _fixed(3), "lower"),
    Column(names.QUANTIZE_SECONDS, "quant s", _fixed(1), "lower"),
    Column("eval_tokens_per_second", "eval tok/s", _fixed(0), "higher"),
    Column(names.PEAK_RSS, "peak RSS MiB", lambda v: f"{v / MIB:.0f}", "lower"),
    Column(names.INFERENCE_CUDA_MAX_ALLOCATED, "peak CUDA MiB", lambda v: f"{v / MIB:.0f}", "lower"),
]
COLUMNS = {c.metric: c for c in CATALOGUE}


def column(metric: str) -> Column:
    """The catalogue entry, or a plain one for metrics it does not know (task scores, variants)."""
    known = COLUMNS.get(metric.split("@")[0])
    if known is not None:
        if known.metric == metric:
            return known
        return Column(metric, f"{known.title} {metric.split('@', 1)[1]}", known.render, known.better)
    base = COLUMNS.get(metric.removesuffix("_stderr"))
    if base is not None and metric.endswith("_stderr"):
        return Column(metric, f"{base.title} ±", base.render)
    if metric.startswith("task:"):
        measure = metric.split("@")[0].rsplit(":", 1)[-1]
        if measure.endswith("_stderr") or measure == "samples":
            better = ""
        else:  # lm-eval tasks also report perplexities (lambada) and bits per byte (wikitext)
            better = "lower" if "perplexity" in measure or "bits_per" in measure else "higher"
        return Column(metric, metric.removeprefix("task:"), _fixed(4), better)
    return Column(metric, metric, lambda v: f"{v:.4g}")


def stderr_of(metric: str) -> str:
    """The name of a task score's standard error: `task:arc:acc@f` -> `task:arc:acc_stderr@f`."""
    root, at, variant = metric.partition("@")
    return f"{root}_stderr{at}{variant}"


def natural_key(name: str) -> list:
    """Sort key that puts `@batch=4` before `@batch=16`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def headline(table: pd.DataFrame) -> list[Column]:
    """Catalogue columns (and their `@variant`s) that the wide `table` has a value for, in display order."""
    present = sorted((str(c) for c in table.columns if table[c].notna().any()), key=natural_key)
    return [column(m) for c in CATALOGUE for m in present if m == c.metric or m.startswith(c.metric + "@")]


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The wide `table` as text for people: who the trial is, then the headline metrics."""
    shown = pd.DataFrame(
        {
            "trial_key": table["trial_key"],
            "status": table["status"],
            "model": table["model_ref"],
            "method": table["method_label"],
            "device": table["device"],
        }
    )
    for spec in headline(table):
        cells = [spec.show(v) for v in table[spec.metric]]
        if stderr_of(spec.metric) in table:
            errors = [_error_text(spec, v) for v in table[stderr_of(spec.metric)]]
            cells = [f"{c} ± {e}" if c and e else c for c, e in zip(cells, errors, strict=True)]
        shown[spec.title] = cells
    if VERDICT_COLUMN in table and table[VERDICT_COLUMN].fillna("").astype(bool).any():
        shown["vs original"] = table[VERDICT_COLUMN].fillna("").to_numpy()
    return shown.reset_index(drop=True)


def _error_text(spec: Column, value: float) -> str:
    """A standard error in its column's format, or in one significant digit where that format
    would round a nonzero error to zero (the KLD of a bf16 baseline: 0.0012 ± 0.00005)."""
    text = spec.show(value)
    if text and value and not any(c in "123456789" for c in text):
        return f"{value:.1g}"
    return text


def best_rows(table: pd.DataFrame) -> dict[str, set[int]]:
    """For each ranked headline column (by title), the row positions holding its best value; ties all count."""
    best = {}
    for spec in headline(table):
        if spec.better:
            values = table[spec.metric].reset_index(drop=True)
            target = values.min() if spec.better == "lower" else values.max()
            best[spec.title] = set(values.index[values == target])
    return best
