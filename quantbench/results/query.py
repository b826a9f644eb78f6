"""Views over the store for people: filters over trials, and one row per trial with metrics as columns.

Filters select whole trials: a trial matches `--corpus wikitext2` when any of its rows was
measured on that corpus, and then all its rows are kept (its weight bytes were measured on no
corpus but still belong to it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from pathlib import Path

import duckdb
import pandas as pd

from quantbench.errors import QuantbenchError
from quantbench.results.store import StoreContents, read_results

TRIAL_COLUMNS = ["trial_key", "created_at", "status", "model_ref", "method_label", "device", "kernel", "error"]
# What the UI and exports show besides the display columns: enough to reproduce the trial.
DETAIL_COLUMNS = ["method", "params_json", "model_fingerprint", "hardware", "hardware_fingerprint", "bits"]

# The nominal bit width of a trial's method. Methods name it differently: `bits` (most),
# `nbits` (hqq), `weights=int4` (quanto), `dtype=bfloat16` (baseline); the first that holds a
# number wins, so rtn's `bits=4` beats its load `dtype=float32`.
BITS_SQL = "COALESCE({})".format(
    ", ".join(
        f"TRY_CAST(NULLIF(regexp_extract(json_extract_string(params_json, '$.{key}'), '\\d+'), '') AS DOUBLE)"
        for key in ("bits", "nbits", "weights", "dtype")
    )
)


@dataclass(frozen=True)
class Filters:
    """Which trials to keep; None means any. Text filters match exactly."""

    model: str | None = None  # model_ref or model_fingerprint
    method: str | None = None  # method name ("bnb") or full label ("bnb:bits=4,...")
    bits: float | None = None  # nominal bit width, see BITS_SQL
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
        "bits": f"{BITS_SQL} = $bits",
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
    with duckdb.connect() as con:
        con.register("rows", frame)
        keys = con.execute(f"SELECT DISTINCT trial_key FROM rows WHERE {' AND '.join(conditions)}", params).fetchall()
    return frame[frame["trial_key"].isin([k for (k,) in keys])].reset_index(drop=True)


def query(store: Path, filters: Filters | None = None) -> StoreContents:
    """Rows of the matching trials in the store, plus the files that could not be read."""
    contents = read_results(store)
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
    trials = frame[["trial_key", "params_json"]].drop_duplicates("trial_key")
    with duckdb.connect() as con:
        con.register("trials", trials)
        bits = con.execute(f"SELECT trial_key, {BITS_SQL} AS bits FROM trials").df()
    return bits.set_index("trial_key")["bits"].astype(float)
