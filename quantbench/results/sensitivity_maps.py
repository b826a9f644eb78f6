"""Sensitivity maps as stored (evals/sensitivity.py): one row per unit, read back as tables.

A map is one trial's `unit_kld_mean` / `unit_top1_agreement` rows, the unit's module name in each
row's note; the trial's method parameters say at which bits the units were quantized.
"""

from __future__ import annotations

import json

import pandas as pd

from quantbench.errors import QuantbenchError
from quantbench.evals.sensitivity import FLOAT_KLD, UNIT_KLD, UNIT_TOP1, block_of

MAP_COLUMNS = ["trial_key", "model_ref", "method", "method_label", "bits", "units", "unit", "kld", "top1", "floor"]


def unit_maps(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, unit) of every ok sensitivity trial in `frame` (tidy store rows), in the
    order the map measured them, with the float model's KLD of that trial as `floor`."""
    if frame.empty or "eval" not in frame:
        return pd.DataFrame(columns=MAP_COLUMNS)
    rows = frame[(frame["eval"] == "sensitivity") & (frame["status"] == "ok")]
    kld = rows[rows["metric"] == UNIT_KLD]
    if kld.empty:
        return pd.DataFrame(columns=MAP_COLUMNS)
    top1 = rows[rows["metric"] == UNIT_TOP1].set_index(["trial_key", "note"])["value"]
    floor = rows[rows["metric"] == FLOAT_KLD].set_index("trial_key")["value"]
    out = pd.DataFrame(
        {
            "trial_key": kld["trial_key"].to_numpy(),
            "model_ref": kld["model_ref"].to_numpy(),
            "method": kld["method"].to_numpy(),
            "method_label": kld["method_label"].to_numpy(),
            "bits": [json.loads(p).get("bits", json.loads(p).get("nbits")) for p in kld["params_json"]],
            "units": [json.loads(p).get("units", "blocks") for p in kld["protocol_json"]],
            "unit": kld["note"].to_numpy(),
            "kld": kld["value"].to_numpy(),
        }
    )
    out["top1"] = [top1.get((k, u)) for k, u in zip(out["trial_key"], out["unit"], strict=True)]
    out["floor"] = out["trial_key"].map(floor)
    return out[MAP_COLUMNS].reset_index(drop=True)


def one_map(maps: pd.DataFrame, key: str) -> pd.DataFrame:
    """The map of the trial whose key is or starts with `key`; QuantbenchError when none or several."""
    keys = sorted({k for k in maps["trial_key"] if k.startswith(key)})
    if len(keys) != 1:
        found = "no" if not keys else f"{len(keys)}"
        raise QuantbenchError(f"{found} sensitivity map with a trial key starting {key!r} in the store")
    return maps[maps["trial_key"] == keys[0]]


def top_offenders(unit_map: pd.DataFrame, n: int) -> pd.DataFrame:
    """The `n` units whose quantization alone moves the KLD most, worst first."""
    return unit_map.sort_values("kld", ascending=False).head(n)


def heat_grid(unit_map: pd.DataFrame) -> pd.DataFrame:
    """A projections map as a grid: one row per block, one column per projection type (the unit's
    name after its block, e.g. `self_attn.q_proj`), KLD in the cells."""
    blocks = [block_of(u) for u in unit_map["unit"]]
    kinds = [u[len(b) + 1 :] or "block" for u, b in zip(unit_map["unit"], blocks, strict=True)]
    grid = pd.DataFrame({"block": blocks, "projection": kinds, "kld": unit_map["kld"].to_numpy()})
    return grid.pivot_table(index="block", columns="projection", values="kld", sort=False)
