import threading

import pandas as pd
import pytest
from rows import fill, trial

from quantbench.results import index as index_module
from quantbench.results.index import StoreIndex, cache_path, store_view
from quantbench.results.query import query
from quantbench.results.store import read_results


@pytest.fixture
def cached(monkeypatch, tmp_path):
    """The index keeps its cache file even for a handful of trial files, under tmp_path."""
    monkeypatch.setattr(index_module, "CACHE_MIN_FILES", 1)
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def reads(monkeypatch):
    """The trial files each read opens (the real reader, watched)."""
    opened: list[list[str]] = []

    def read_files(files):
        opened.append(sorted(p.name for p in files))
        return real(files)

    real = index_module.read_files
    monkeypatch.setattr(index_module, "read_files", read_files)
    return opened


def _same_as_store(store, index=None):
    contents = (index or StoreIndex(store)).contents()
    pd.testing.assert_frame_equal(contents.frame, read_results(store).frame)


def test_the_index_follows_added_rewritten_and_removed_trials(mixed_store, reads):
    index = StoreIndex(mixed_store)
    _same_as_store(mixed_store, index)
    _same_as_store(mixed_store, index)
    assert len(reads) == 1  # the second read opened no file
    fill(mixed_store, trial("new", "rtn", {"bits": 3}, day=9, metrics={"perplexity": 15.0}))
    _same_as_store(mixed_store, index)
    assert reads[-1] == ["new.parquet"]
    fill(mixed_store, trial("new", "rtn", {"bits": 3}, day=9, metrics={"perplexity": 16.0, "weight_bytes": 1.0}))
    _same_as_store(mixed_store, index)
    (mixed_store / "new.parquet").unlink()
    _same_as_store(mixed_store, index)
    assert "new" not in set(index.contents().frame["trial_key"])
    fill(mixed_store, trial("older", "rtn", {"bits": 2}, day=-1, metrics={"perplexity": 40.0}))
    _same_as_store(mixed_store, index)  # a trial dated before the others lands in its place


def test_a_new_process_reads_the_cache_file_and_only_the_trials_added_since(cached, mixed_store, reads):
    _same_as_store(mixed_store)
    assert cache_path(mixed_store).is_file()
    fill(mixed_store, trial("new", "rtn", {"bits": 3}, day=9, metrics={"perplexity": 15.0}))
    _same_as_store(mixed_store)  # a fresh index, as in another process
    assert reads[-1] == ["new.parquet"]
    fill(mixed_store, trial("bnb4", "bnb", {"bits": 8}, day=1, metrics={"perplexity": 16.0}))
    _same_as_store(mixed_store)  # a trial in the cache file rewritten: everything is read again
    assert len(reads[-1]) == 6


def test_a_damaged_cache_is_rebuilt_and_bad_files_are_reported_every_time(cached, mixed_store, reads):
    StoreIndex(mixed_store).contents()
    cache_path(mixed_store).write_bytes(b"garbage")
    (mixed_store / "torn.parquet").write_bytes(b"PAR1")
    index = StoreIndex(mixed_store)
    for _ in range(2):
        contents = index.contents()
        assert [s.split(":")[0] for s in contents.skipped] == ["torn.parquet"]
    assert reads[-1] == sorted(p.name for p in mixed_store.glob("*.parquet"))  # once, all of them
    _same_as_store(mixed_store)
    # The unreadable file replaced by a trial: only it is read again, and it is no longer reported.
    (mixed_store / "torn.parquet").unlink()
    fill(mixed_store, trial("torn", "rtn", {"bits": 4}, day=8, metrics={"perplexity": 14.0}))
    contents = index.contents()
    assert contents.skipped == [] and reads[-1] == ["torn.parquet"]
    _same_as_store(mixed_store, index)


def test_a_caller_changing_its_frame_does_not_change_the_index(mixed_store):
    index = StoreIndex(mixed_store)
    frame = index.contents().frame
    frame.loc[0, "value"] = -1.0
    frame["extra"] = 1
    _same_as_store(mixed_store, index)


def test_a_view_is_computed_once_per_state_of_the_store(mixed_store):
    index, calls = StoreIndex(mixed_store), []

    def trials(contents):
        calls.append(1)
        return contents.frame["trial_key"].nunique()

    assert [index.view("trials", trials) for _ in range(3)] == [5, 5, 5] and len(calls) == 1
    fill(mixed_store, trial("new", "rtn", {"bits": 3}, day=9, metrics={"perplexity": 15.0}))
    assert index.view("trials", trials) == 6 and len(calls) == 2


def test_a_failed_view_is_not_kept(mixed_store):
    index, attempts = StoreIndex(mixed_store), []

    def flaky(contents):
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first try fails")
        return len(contents.frame)

    with pytest.raises(ValueError, match="first try fails"):
        index.view("rows", flaky)
    assert index.view("rows", flaky) == len(read_results(mixed_store).frame)


def test_requests_arriving_together_wait_for_one_computation(mixed_store):
    index, calls, started = StoreIndex(mixed_store), [], threading.Event()
    release = threading.Event()

    def slow(contents):
        calls.append(1)
        started.set()
        release.wait(10)
        return len(contents.frame)

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(index.view("rows", slow))) for _ in range(8)]
    threads[0].start()
    started.wait(10)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and answers == [len(read_results(mixed_store).frame)] * 8


def test_query_and_views_of_a_missing_store_are_empty(tmp_path):
    assert query(tmp_path / "none").frame.empty
    assert store_view(tmp_path / "none", "rows", lambda contents: len(contents.frame)) == 0


def test_the_cache_file_is_rewritten_once_it_lacks_enough_trials(cached, mixed_store, reads, monkeypatch):
    monkeypatch.setattr(index_module, "CACHE_STALE_FILES", 2)
    index = StoreIndex(mixed_store)
    index.contents()
    fill(mixed_store, trial("one", "rtn", {"bits": 3}, day=9, metrics={"perplexity": 15.0}))
    index.contents()
    StoreIndex(mixed_store).contents()  # another process: the cache file lacks one trial
    assert reads[-1] == ["one.parquet"]
    fill(mixed_store, trial("two", "rtn", {"bits": 4}, day=10, metrics={"perplexity": 13.0}))
    index.contents()
    _same_as_store(mixed_store)  # another process: the cache file now holds both
    assert reads[-1] == []
