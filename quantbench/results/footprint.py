"""The planner's estimate of the memory each stored trial's format needs at a context the user
chooses: what a chart or a recommendation puts on its size axis when the question is "does it fit
at my context", which the measured weight bytes alone do not answer (the KV cache and the
activations grow with the context; the runtime is there whatever the format).

The estimate prices the trial's own layout (its method and stored parameters, on its device kind)
for the trial's model, as `quantbench plan` would; it is not calibrated against measured peaks.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from quantbench.errors import QuantbenchError
from quantbench.planner.calibrate import stored_layout
from quantbench.planner.config import Architecture
from quantbench.planner.estimate import Workload, estimate
from quantbench.planner.source import load_architecture
from quantbench.results.query import wide


def estimated_memory(frame: pd.DataFrame, context: int, batch: int = 1, kv_dtype: str = "fp16") -> pd.Series:
    """Bytes per trial key of the ok trials: the planner's total for `batch` sequences of `context`
    tokens; NaN where the planner cannot price the model or the method."""
    workloads = {device: Workload(context, batch, kv_dtype, device=device) for device in ("cpu", "cuda")}
    workloads["cpu"].validate()  # bad input is one line before any trial is priced
    if frame.empty:
        return pd.Series(dtype=float)
    table = wide(frame[frame["status"] == "ok"])
    archs: dict[str, Architecture | None] = {}
    out = {}
    for row in table.itertuples(index=False):
        if row.model_ref not in archs:
            try:
                archs[row.model_ref] = load_architecture(row.model_ref)[0]
            except QuantbenchError:
                archs[row.model_ref] = None  # a model neither on disk nor a preset: no estimate
        arch, device = archs[row.model_ref], "cuda" if str(row.device).startswith("cuda") else "cpu"
        out[row.trial_key] = math.nan
        if arch is not None:
            try:
                fmt = stored_layout(row.method, json.loads(row.params_json or "{}"), device)
            except QuantbenchError:
                continue  # a method the planner has no layout for
            out[row.trial_key] = float(estimate(arch, fmt, workloads[device]).total)
    return pd.Series(out, dtype=float).sort_index()
