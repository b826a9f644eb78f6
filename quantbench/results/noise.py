"""The noise floor: how far a model that should be identical drifts from the original.

A baseline trial in half precision (bfloat16 on CPU, float16 on GPU) runs the same weights as
the float32 original, only rounded: its divergence from the float32 model on the same tokens is
what arithmetic alone costs, measured on that model and corpus. It is stored like any trial (the
`baseline:compute_dtype=bfloat16` trial of a sweep that runs the divergence eval), so the floor
of a comparability group (same model fingerprint, corpus hash and divergence protocol) is that
trial's `kld_mean`; of several such trials, the newest.

A quantized trial whose mean KLD is at or below the floor, or above it by no more than a paired
test on the same windows can tell (results/compare.py) where that test can tell a difference as
small as the floor itself, is labelled indistinguishable from the original: quantizing it cost no
more than running the model in half precision.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantbench.backends.registry import stored_params
from quantbench.errors import QuantbenchError
from quantbench.results.columns import VERDICT_COLUMN
from quantbench.results.compare import comparability_groups, paired_metric
from quantbench.results.query import wide

HALF_PRECISION = ("bfloat16", "float16")
FLOOR_METRIC = "kld_mean"
INDISTINGUISHABLE = "indistinguishable from the original"


@dataclass(frozen=True)
class NoiseFloor:
    group: str  # the comparability group label (results/compare.py)
    trial_key: str  # the half-precision baseline trial that measured it
    method_label: str
    value: float  # that trial's value of the metric
    stderr: float  # its standard error; NaN where the store has none


def is_half_precision_baseline(method: str, params_json: str | None) -> bool:
    """Whether a stored trial is the unquantized model run in bfloat16 or float16."""
    if method != "baseline":
        return False
    try:
        return stored_params(method, json.loads(params_json or "{}")).compute_dtype in HALF_PRECISION
    except QuantbenchError:
        return False


def noise_floors(frame: pd.DataFrame, metric: str = FLOOR_METRIC) -> dict[str, NoiseFloor]:
    """Per comparability group of `metric`: the newest ok half-precision baseline's value of it.
    Groups without such a trial have no floor."""
    if frame.empty or not frame["metric"].eq(metric).any():
        return {}
    return floors_in(wide(frame[frame["status"] == "ok"]), comparability_groups(frame, metric), metric)


def floors_in(table: pd.DataFrame, groups: dict[str, str], metric: str) -> dict[str, NoiseFloor]:
    """`noise_floors` from the store's wide table of ok trials and its comparability groups of `metric`."""
    if metric not in table:
        return {}
    half = [is_half_precision_baseline(m, p) for m, p in zip(table["method"], table["params_json"], strict=True)]
    floor_rows = table[table[metric].notna().to_numpy() & np.array(half, dtype=bool)]
    stderr = f"{metric}_stderr"
    errors = floor_rows[stderr] if stderr in floor_rows else pd.Series(math.nan, index=floor_rows.index)
    floors: dict[str, NoiseFloor] = {}
    # wide() lists the newest trial first: the first one seen in a group is its floor.
    for key, label, value, error in zip(
        floor_rows["trial_key"], floor_rows["method_label"], floor_rows[metric], errors, strict=True
    ):
        group = groups.get(key)
        if group is not None and group not in floors:
            floors[group] = NoiseFloor(group, key, label, float(value), float(error))
    return floors


def verdicts(frame: pd.DataFrame) -> pd.Series:
    """Per trial key that measured the floor metric in a group with a floor: `INDISTINGUISHABLE`
    where its mean KLD is at or below the floor or not significantly above it, else ""."""
    if frame.empty or not frame["metric"].eq(FLOOR_METRIC).any():
        return pd.Series(dtype=object)
    # One wide table and one grouping serve both the floors and the verdicts (stores run to 100k rows).
    table = wide(frame[frame["status"] == "ok"])
    groups = comparability_groups(frame, FLOOR_METRIC)
    floors = floors_in(table, groups, FLOOR_METRIC)
    if not floors:
        return pd.Series(dtype=object)
    table = table.set_index("trial_key")
    out = {}
    for key, group in groups.items():
        floor = floors.get(group)
        if floor is None or key not in table.index or math.isnan(table.at[key, FLOOR_METRIC]):
            continue
        out[key] = INDISTINGUISHABLE if _within_floor(frame, key, table.at[key, FLOOR_METRIC], floor) else ""
    return pd.Series(out, dtype=object).sort_index()


def _within_floor(frame: pd.DataFrame, key: str, kld: float, floor: NoiseFloor) -> bool:
    if kld <= floor.value:
        return True
    paired = paired_metric(frame, key, floor.trial_key, FLOOR_METRIC)
    # Without per-window sums (an older store) only "at or below" can be told. A test that cannot
    # reject is evidence only where it could have told a difference as large as the floor itself:
    # with a few noisy windows a 4-bit trial is "not significantly above" a floor 100 times smaller.
    if paired is None or math.isnan(paired.stderr):
        return False
    return not paired.significant and paired.margin <= floor.value


def with_verdicts(table: pd.DataFrame, everything: pd.DataFrame) -> pd.DataFrame:
    """The wide `table` with a `vs_original` column judged against the floors of `everything` (the
    whole store's rows, so a filter that hides the floor trial does not hide the verdict); the
    table unchanged when `everything` has no floor."""
    judged = verdicts(everything)
    if judged.empty:  # no floor measured: no column, so exports of such stores keep their shape
        return table
    return table.assign(**{VERDICT_COLUMN: [judged.get(key, "") for key in table["trial_key"]]})
