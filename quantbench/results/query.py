"""Views over the store for people: filters over trials, and one row per trial with metrics as columns.

Filters select whole trials: a trial matches `--corpus wikitext2` when any of its rows was
measured on that corpus, and then all its rows are kept (its weight bytes were measured on no
corpus but still belong to it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import duckdb
import pandas as pd

from quantbench.backends.registry import stored_params
from quantbench.errors import QuantbenchError
from quantbench.results.index import read_indexed
from quantbench.results.store import StoreContents

TRIAL_COLUMNS = ["trial_key", "created_at", "status", "model_ref", "method_label", "device", "kernel", "error"]
# What the UI and exports show besides the display columns: enough to reproduce the trial.
DETAIL_COLUMNS = ["method", "params_json", "model_fingerprint", "hardware", "hardware_fingerprint", "bits"]


def nominal_bits(method: str, params_json: str | None) -> float:
    """The `bits` of a trial's method parameters (a field, or a property where the method names its
    width otherwise: quanto's `weights=int4`, baseline's dtype); NaN where the method has none, or
    its backend is gone or no longer accepts what was stored."""
    try:
        params = stored_params(method, json.loads(params_json or "{}"))
    except QuantbenchError:
        return math.nan
    return float(getattr(params, "bits", math.nan))


@dataclass(frozen=True)
class Filters:
    """Which trials to keep; None means any. Text filters match exactly."""

    model: str | None = None  # model_ref or model_fingerprint
    method: str | None = None  # method name ("bnb") or full label ("bnb:bits=4,...")
    bits: float | None = None  # nominal bit width, see nominal_bits
    device: str | None = None
    corpus: str | None = None  # corpus name or content hash
    since: dt.datetime | None = None  # created_at >= since
    until: dt.datetime | None = None  # created_at < until
    status: str | None = None  # ok | failed

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise QuantbenchError(
                f"--since {self.since:%Y-%m-%d %H:%M} is not before --until {self.until:%Y-%m-%d %H:%M}"
            )

    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


def parse_when(text: str, flag: str, end_of_day: bool = False) -> dt.datetime:
    """An ISO date or date-time, UTC unless it names a zone; a bare date with `end_of_day`
    means the midnight after it, so `--until 2026-11-22` includes that whole day."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise QuantbenchError(f"{flag} {text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    if end_of_day and len(text) == 10:
        when += dt.timedelta(days=1)
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def select(frame: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """The rows of the trials that match every filter, in the frame's order."""
    if frame.empty or not filters.active():
        return frame
    conditions, params = [], {}
    for name, sql in {
        "model": "(model_ref = $model OR model_fingerprint = $model)",
        "method": "(method = $method OR method_label = $method)",
        "device": "device = $device",
        "corpus": "(corpus = $corpus OR corpus_hash = $corpus)",
        "since": "created_at >= $since",
        "until": "created_at < $until",
        "status": "status = $status",
    }.items():
        value = getattr(filters, name)
        if value is not None:
            conditions.append(sql)
            params[name] = value
    keys = set(frame["trial_key"].unique())
    if conditions:
        with duckdb.connect() as con:
            con.register("rows", frame)
            found = con.execute(f"SELECT DISTINCT trial_key FROM rows WHERE {' AND '.join(conditions)}", params)
            keys = {k for (k,) in found.fetchall()}
    if filters.bits is not None:
        bits = trial_bits(frame)
        keys &= set(bits.index[bits == filters.bits])
    return frame[frame["trial_key"].isin(keys)].reset_index(drop=True)


def query(store: Path, filters: Filters | None = None) -> StoreContents:
    """Rows of the matching trials in the store, plus the files that could not be read."""
    contents = read_indexed(store)
    return StoreContents(select(contents.frame, filters or Filters()), contents.skipped)


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """Pivot tidy rows into one row per trial (latest first), metrics as columns.

    A metric reported by several evals of one trial (each eval's `peak_rss_bytes`) keeps the
    largest value for `peak_*` metrics, the trial's peak, and the last one otherwise.
    """
    columns = TRIAL_COLUMNS + DETAIL_COLUMNS
    if frame.empty:
        return pd.DataFrame(columns=columns)
    present = [c for c in columns if c in frame and c != "bits"]
    trials = frame[present].drop_duplicates("trial_key").set_index("trial_key")
    trials = trials.reindex(columns=[c for c in columns if c != "trial_key"])
    trials["bits"] = trial_bits(frame)
    measured = frame[frame["metric"].fillna("") != ""]
    if not measured.empty:
        grouped = measured.groupby(["trial_key", "metric"], sort=False)["value"]
        values = grouped.last()
        peaks = values.index.get_level_values("metric").str.startswith("peak_")
        values[peaks] = grouped.max()[peaks]
        trials = trials.join(values.unstack("metric"))
    return trials.reset_index().sort_values(["created_at", "trial_key"], ascending=False, ignore_index=True)


def trial_bits(frame: pd.DataFrame) -> pd.Series:
    """Nominal bit width per trial key (NaN where the method names none)."""
    trials = frame[["trial_key", "method", "params_json"]].drop_duplicates("trial_key")
    # A store repeats a few settings over many trials: validate each distinct one once.
    distinct: dict[tuple, float] = {}
    bits = [
        distinct[pair] if pair in distinct else distinct.setdefault(pair, nominal_bits(*pair))
        for pair in zip(trials["method"], trials["params_json"], strict=True)
    ]
    return pd.Series(bits, index=trials["trial_key"], dtype=float)
