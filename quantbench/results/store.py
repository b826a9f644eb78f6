"""The results store: a directory with one Parquet file per finished trial.

Writes go to a hidden temporary file in the same directory, are flushed to disk, then renamed
over `<trial_key>.parquet`; a crash or a concurrent writer therefore never leaves a partial
file under a name readers look at. Readers query the directory through DuckDB; a corrupt or
foreign file is reported and skipped, never fatal.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantbench.errors import QuantbenchError
from quantbench.files import atomic_path
from quantbench.results.schema import REQUIRED_COLUMNS

# Trial keys are hashes; this also keeps a caller's key from naming a path outside the store.
TRIAL_KEY = re.compile(r"[A-Za-z0-9_-]+")


def default_store() -> Path:
    root = os.environ.get("QUANTBENCH_STORE")
    if root:
        return Path(root)
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "quantbench" / "results"


def check_writable(store: Path) -> None:
    """Fail early, before hours of measuring, if results could not be saved."""
    try:
        store.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=store)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise QuantbenchError(f"store directory {store} is not writable: {exc.strerror or exc}") from None


def write_trial(store: Path, trial_key: str, table: pa.Table) -> Path:
    """Atomically write one trial's rows as `<trial_key>.parquet`; returns the final path."""
    if not TRIAL_KEY.fullmatch(trial_key):
        raise QuantbenchError(f"trial key {trial_key!r} is not a plain file name (letters, digits, _ and -)")
    check_writable(store)
    final = store / f"{trial_key}.parquet"
    try:
        # Through a Python file, so a failed write raises the OS's own error (errno and its text)
        # rather than Arrow's wrapping of it.
        with atomic_path(final, durable=True) as tmp, tmp.open("wb") as f:
            pq.write_table(table, f)
    except OSError as exc:
        raise QuantbenchError(f"cannot write results to {store}: {exc.strerror or exc}") from None
    return final


@dataclass
class StoreContents:
    frame: pd.DataFrame
    skipped: list[str] = field(default_factory=list)  # one line per unreadable file


def result_files(store: Path) -> list[Path]:
    # Hidden files are in-flight temporaries of a writer.
    return sorted(p for p in store.glob("*.parquet") if not p.name.startswith("."))


def read_results(store: Path) -> StoreContents:
    """Every readable row in the store, newest schema first; unreadable files listed in `skipped`."""
    if not store.is_dir():
        return StoreContents(pd.DataFrame())
    return read_files(result_files(store))


def read_files(files: list[Path]) -> StoreContents:
    """The readable rows of these result files; unreadable ones listed in `skipped`."""
    good, skipped = [], []
    for path in files:
        problem = _problem(path)
        if problem:
            skipped.append(f"{path.name}: {problem}")
        else:
            good.append(path)
    if not good:
        return StoreContents(pd.DataFrame(), skipped)
    try:
        frame = _query(good)
    except duckdb.Error:
        # A file whose footer is fine but whose pages are damaged: find it, drop it, go on.
        good, more = _readable(good)
        skipped += more
        frame = _query(good) if good else pd.DataFrame()
    return StoreContents(frame, skipped)


def _query(files: list[Path]) -> pd.DataFrame:
    with duckdb.connect() as con:
        query = "SELECT * FROM read_parquet($files, union_by_name = true) ORDER BY created_at, trial_key"
        return con.sql(query, params={"files": [str(f) for f in files]}).to_arrow_table().to_pandas()


def _problem(path: Path) -> str | None:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        return f"not a readable Parquet file ({str(exc).splitlines()[0][:120]})"
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        return f"not a quantbench result file (missing columns: {', '.join(missing)})"
    return None


def _readable(files: list[Path]) -> tuple[list[Path], list[str]]:
    good, bad = [], []
    for path in files:
        try:
            pq.read_table(path)
            good.append(path)
        except (OSError, pa.ArrowException) as exc:
            bad.append(f"{path.name}: damaged ({str(exc).splitlines()[0][:120]})")
    return good, bad
