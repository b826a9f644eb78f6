"""The dashboard under load, over the real `quantbench ui` on 127.0.0.1: 20 concurrent results and
chart requests on a 100,000-row store, then two sweeps writing that store while the dashboard and
a direct reader keep reading it."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_runs import CLI, METHODS, assert_store_is_clean, isolated_env, sweep_file
from support import ROOT, free_port, serving_ui

from quantbench.results.store import read_results, result_files
from quantbench.runner.sweep import load_sweep

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

TRIALS, METRICS = 2000, 50  # bench/store.py's synthetic store: 100,000 metric rows
START_TIMEOUT_S = 180  # importing torch, gradio and every adapter on a busy 2-core machine
CONCURRENT = 20


def _bench_store():
    spec = importlib.util.spec_from_file_location("bench_store", ROOT / "bench" / "store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("big") / "store"
    store.mkdir()
    _bench_store().fill_store(store, TRIALS, METRICS)
    return store


@pytest.fixture(scope="module")
def ui(big_store: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(URL, environment) of `quantbench ui` serving `big_store` on a free loopback port."""
    env = isolated_env(big_store.parent)
    args = ["--host", "127.0.0.1", "--port", str(free_port()), "--store", str(big_store)]
    try:
        with serving_ui(args, env, START_TIMEOUT_S) as (url, _log):
            yield url, env
    except RuntimeError as exc:
        pytest.fail(str(exc))


def call(client, endpoint: str) -> tuple[float, tuple]:
    """One API call with the page's default filters; (seconds, outputs)."""
    start = time.perf_counter()
    if endpoint == "results":
        out = client.predict("any", "any", "", api_name="/results")
    else:
        out = client.predict("pareto", "perplexity", 4096, "any", "", api_name="/chart")
    return time.perf_counter() - start, out


def error_of(out: tuple) -> str:
    """The tab's error box (the handlers' last output): empty unless the handler failed."""
    box = out[-1]
    return (box.get("value") if isinstance(box, dict) else box) or ""


def trial_count(out: tuple) -> int:
    """Trials in a results answer ("N trials (M failed)." in the summary)."""
    return int(str(out[1]).split()[0])


def test_twenty_concurrent_results_and_chart_requests(ui):
    url, _ = ui
    client = gradio_client.Client(url, verbose=False)
    first, out = call(client, "results")  # reads every trial file and fills the query cache
    trials = trial_count(out)
    assert error_of(out) == "" and trials >= TRIALS  # the sweeps of the other test may have added theirs
    endpoints = ["results", "chart"] * (CONCURRENT // 2)
    # One client (one session, one event stream) per request, as twenty browsers would be: threads sharing
    # one gradio_client race on its stream (the server closes it between two submits -> CancelledError).
    users = [gradio_client.Client(url, verbose=False) for _ in endpoints]
    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(lambda ue: (ue[1], *call(*ue)), zip(users, endpoints, strict=True)))
    errors = [(e, error_of(out)) for e, _, out in answers if error_of(out)]
    assert errors == []
    assert all(trial_count(out) == trials for e, _, out in answers if e == "results")
    assert all(out[0] for e, _, out in answers if e == "chart")  # a figure came back
    latencies = sorted(seconds for _, seconds, _ in answers)
    p50, p90 = statistics.quantiles(latencies, n=10)[4], statistics.quantiles(latencies, n=10)[8]
    print(f"\nUI load: {CONCURRENT} concurrent requests (results + chart) on {TRIALS * METRICS:,} rows: "
          f"p50 {p50:.2f} s, p90 {p90:.2f} s, max {latencies[-1]:.2f} s; first (cold) results {first:.2f} s; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip


def test_two_sweeps_and_the_dashboard_on_one_store(ui, big_store, tiny_model_dir, tmp_path):
    """Two sweeps at once, sharing one trial (both run it; the later rename wins, whole), write the
    store the dashboard serves; the dashboard and a direct reader poll it all along."""
    url, env = ui
    client = gradio_client.Client(url, verbose=False)
    files = [sweep_file(tmp_path, tiny_model_dir, METHODS[:3], "a.yaml"),
             sweep_file(tmp_path, tiny_model_dir, METHODS[2:], "b.yaml")]  # fmt: skip
    keys = {s.key for f in files for s in load_sweep(f)[1]}
    env = isolated_env(tmp_path)
    before = len(result_files(big_store))
    procs = [subprocess.Popen([*CLI, "sweep", str(f), "--store", str(big_store)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for f in files]  # fmt: skip
    seen_ui, seen_files = [], []
    while any(p.poll() is None for p in procs):
        _, out = call(client, "results")
        assert error_of(out) == ""
        seen_ui.append(trial_count(out))
        seen_files.append(len(result_files(big_store)))
        assert_store_is_clean(big_store)
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    assert seen_ui == sorted(seen_ui) and seen_files == sorted(seen_files)  # trials only ever appear
    frame = read_results(big_store).frame
    assert keys <= set(frame["trial_key"]) and frame["trial_key"].nunique() == before + len(keys)
    _, out = call(client, "results")
    assert trial_count(out) == before + len(keys)
    assert_store_is_clean(big_store)
    assert not [p for p in big_store.iterdir() if p.name.startswith(".")]
    print(f"\ntwo sweeps + dashboard: {len(seen_ui)} dashboard reads while writing, trials {seen_ui[0]} -> "
          f"{seen_ui[-1]}")  # fmt: skip
