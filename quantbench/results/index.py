"""An index of a store, kept current as trial files arrive, so a reader pays for what changed.

A dashboard serving a store of thousands of trial files answers many requests between two new
trials; re-reading every file (or even one consolidated copy of them) per request made 20
concurrent requests on a 100,000-row store wait 10 to 20 s. So each process keeps, per store:

- the store's rows in memory, with the size, mtime, ctime and inode of each trial file they came
  from. A read lists the directory and stats its files (milliseconds for thousands); it reads
  only the files added since, and everything again if a file it had read changed or vanished
  (a trial file is rewritten only when a trial is re-run, which is rare). A file that could not
  be read keeps its one-line reason and is read again only once it changes.
- for a large store, the same rows in one cache file (in the user's cache dir, so a read-only or
  shared store works and the store holds only trial files), so a fresh process, the dashboard
  started again, does not open every trial file either.
- views computed from the rows (a wide table, the noise verdicts, a figure), each kept until the
  store changes. Requests that arrive together for the same view wait for one computation.

The store itself stays the trial files, readable by DuckDB from outside; the index is only a
cache of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantbench.files import atomic_path
from quantbench.results.store import StoreContents, read_files

CACHE_MIN_FILES = 200  # below this, reading the files directly takes well under a second
CACHE_STALE_FILES = 50
_STAMPS_KEY = b"quantbench.file_stamps"
T = TypeVar("T")


def cache_path(store: Path) -> Path:
    from quantbench.models import cache_dir  # imports torch: only when a large store is read

    digest = hashlib.sha256(str(store.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "query" / f"{digest}.parquet"


class StoreIndex:
    """The rows of one store directory and the views computed from them; safe to share between threads."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self._lock = threading.Lock()  # guards everything below; held while reading new files
        self._stamps: dict[str, str] = {}  # every file seen, readable or not
        self._skipped: dict[str, str] = {}  # file name -> its "name: problem" line
        self._frame = pd.DataFrame()
        self._unsaved = 0  # readable files the cache file lacks
        self._views: dict[Hashable, Future] = {}  # of the current rows only

    def contents(self) -> StoreContents:
        """Every readable row in the store (as `read_results` returns them) and the unreadable files."""
        with self._lock:
            self._refresh()
            return self._current()

    def view(self, key: Hashable, compute: Callable[[StoreContents], T]) -> T:
        """`compute(contents())`, computed once per state of the store for each `key`; a computation
        that raises is not kept, so the next request tries again."""
        with self._lock:
            self._refresh()
            future = self._views.get(key)
            owner = future is None
            if owner:
                future = self._views[key] = Future()
                contents = self._current()
        if owner:
            try:
                future.set_result(compute(contents))
            except BaseException as exc:
                with self._lock:
                    if self._views.get(key) is future:
                        del self._views[key]
                future.set_exception(exc)
        return future.result()

    def _current(self) -> StoreContents:
        # pandas copy-on-write: a shallow copy lets a caller change its frame without changing ours.
        skipped = [self._skipped[name] for name in sorted(self._skipped)]
        return StoreContents(self._frame.copy(deep=False), skipped)

    def _refresh(self) -> None:
        stamps = _stamps(self.store)
        if stamps == self._stamps:
            return
        self._views = {}
        large = len(stamps) >= CACHE_MIN_FILES
        if not self._stamps and large:
            self._frame, self._stamps = _load_cache(cache_path(self.store))
            self._unsaved = 0
        changed = {name for name, stamp in self._stamps.items() if stamps.get(name) != stamp}
        if changed - self._skipped.keys():  # a trial was rewritten or removed: its rows are not told apart
            self._frame, self._stamps, self._skipped = pd.DataFrame(), {}, {}
        for name in changed & self._skipped.keys():  # an unreadable file replaced or removed: read it again
            del self._skipped[name], self._stamps[name]
        everything = not self._stamps
        fresh = read_files([self.store / name for name in sorted(stamps) if name not in self._stamps])
        for line in fresh.skipped:
            self._skipped[line.split(": ", 1)[0]] = line
        self._unsaved += len(stamps) - len(self._stamps) - len(fresh.skipped)
        self._stamps = stamps
        if fresh.frame.empty:
            return
        self._frame = _merged(self._frame, fresh.frame)
        # Rewriting the cache file costs more than reading a few trial files: a new process reads
        # up to CACHE_STALE_FILES of them beside it.
        if large and (everything or self._unsaved >= CACHE_STALE_FILES):
            readable = {name: stamp for name, stamp in stamps.items() if name not in self._skipped}
            _save_cache(cache_path(self.store), self._frame, readable)
            self._unsaved = 0


def _merged(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Both frames' rows in store order (created_at, then trial key), each frame already in it."""
    if old.empty:
        return new
    frame = pd.concat([old, new], ignore_index=True)
    order = ["created_at", "trial_key"]
    if tuple(new[order].iloc[0]) > tuple(old[order].iloc[-1]):  # the usual case: newer trials arrived
        return frame
    return frame.sort_values(order, kind="stable", ignore_index=True)


_indexes: dict[Path, StoreIndex] = {}
_indexes_lock = threading.Lock()


def store_index(store: Path) -> StoreIndex:
    """This process's index of `store` (one per directory, however it is named)."""
    key = store.resolve()
    with _indexes_lock:
        return _indexes.setdefault(key, StoreIndex(key))


def read_indexed(store: Path) -> StoreContents:
    """What `read_results(store)` returns, read through the store's index."""
    if not store.is_dir():
        return StoreContents(pd.DataFrame())
    return store_index(store).contents()


def store_view(store: Path, key: Hashable, compute: Callable[[StoreContents], Any]) -> Any:
    """`compute` of the store's contents, kept by the store's index until the store changes."""
    if not store.is_dir():
        return compute(StoreContents(pd.DataFrame()))
    return store_index(store).view(key, compute)


def _stamps(store: Path) -> dict[str, str]:
    """File name -> what changes when the file is written or replaced, for each file `result_files`
    lists (through scandir: a dashboard request pays this for every trial file)."""
    stamps = {}
    with os.scandir(store) as entries:
        for entry in entries:
            if not entry.name.endswith(".parquet") or entry.name.startswith("."):
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue  # removed since the directory was listed
            stamps[entry.name] = f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"
    return stamps


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
        pass  # no writable cache dir: queries still work, just from the trial files
