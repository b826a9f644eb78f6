"""Views over the store for people: filters over trials, and one row per trial with metrics as columns.

Filters select whole trials: a trial matches `--corpus wikitext2` when any of its rows was
measured on that corpus, and then all its rows are kept (its weight bytes were measured on no
corpus but still belong to it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantbench.backends.registry import stored_params
from quantbench.errors import QuantbenchError
from quantbench.files import atomic_path
from quantbench.results.store import StoreContents, read_files, result_files

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
    keys = set(frame["trial_key"])
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
    contents = read_cached(store)
    return StoreContents(select(contents.frame, filters or Filters()), contents.skipped)


# Opening thousands of small trial files costs far more than reading their rows. For a large
# store a query therefore keeps every row it read in one cache file (in the user's cache dir,
# so a read-only or shared store works and the store holds only trial files), with the size,
# mtime and inode of each trial file those rows came from. The next query reads that file plus
# only the trial files added since; if any cached file changed or vanished, it reads them all.
CACHE_MIN_FILES = 200  # below this, reading the files directly takes well under a second
_STAMPS_KEY = b"quantbench.file_stamps"


def cache_path(store: Path) -> Path:
    from quantbench.models import cache_dir  # imports torch: only when a large store is read

    digest = hashlib.sha256(str(store.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "query" / f"{digest}.parquet"


def _stamp(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"


def read_cached(store: Path) -> StoreContents:
    """What `read_results(store)` returns, read mostly from the query cache when it is current."""
    if not store.is_dir():
        return StoreContents(pd.DataFrame())
    files = result_files(store)
    if len(files) < CACHE_MIN_FILES:
        return read_files(files)
    stamps = {p.name: _stamp(p) for p in files}
    cache = cache_path(store)
    cached, cached_stamps = _load_cache(cache)
    if any(stamps.get(name) != stamp for name, stamp in cached_stamps.items()):
        cached, cached_stamps = pd.DataFrame(), {}  # a trial was rewritten or removed
    fresh = read_files([store / name for name in stamps if name not in cached_stamps])
    if fresh.frame.empty:
        return StoreContents(cached, fresh.skipped)
    bad = {line.split(": ", 1)[0] for line in fresh.skipped}  # "name: problem"; re-read, re-reported next time
    cached_stamps |= {name: stamps[name] for name in stamps if name not in bad}
    frame = pd.concat([df for df in (cached, fresh.frame) if not df.empty], ignore_index=True)
    frame = frame.sort_values(["created_at", "trial_key"], kind="stable", ignore_index=True)
    _save_cache(cache, frame, cached_stamps)
    return StoreContents(frame, fresh.skipped)


def _load_cache(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    try:
        table = pq.read_table(path)
        return table.to_pandas(), json.loads(table.schema.metadata[_STAMPS_KEY])
    except (OSError, KeyError, TypeError, ValueError, pa.ArrowException):
        return pd.DataFrame(), {}  # no cache yet, or a damaged one: read the trial files


def _save_cache(path: Path, frame: pd.DataFrame, stamps: dict[str, str]) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _STAMPS_KEY: json.dumps(stamps)})
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except OSError:
        pass  # no writable cache dir: queries still work, just uncached


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
    bits = [nominal_bits(m, p) for m, p in zip(trials["method"], trials["params_json"], strict=True)]
    return pd.Series(bits, index=trials["trial_key"], dtype=float)
