"""Views over the store for people: one row per trial, one column per metric."""

from __future__ import annotations

import pandas as pd

TRIAL_COLUMNS = ["trial_key", "created_at", "status", "model_ref", "method_label", "device", "kernel", "error"]


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """Pivot tidy rows into one row per trial (latest first), metrics as columns."""
    if frame.empty:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    trials = frame[TRIAL_COLUMNS].drop_duplicates("trial_key").set_index("trial_key")
    measured = frame[frame["metric"] != ""]
    if not measured.empty:
        metrics = measured.pivot_table(index="trial_key", columns="metric", values="value", aggfunc="last")
        trials = trials.join(metrics)
    return trials.reset_index().sort_values("created_at", ascending=False, ignore_index=True)
