"""Cancelling a sweep: the running worker and its children are killed at once, nothing is stored,
no further trial starts, and the same trial runs normally afterwards."""

import threading
import time

import psutil

from quantbench.results.store import read_results
from quantbench.runner.executor import TrialEvent, run_local
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef

PPL = EvalSpec("perplexity", {"seq_len": 32, "max_tokens": 96})


def specs(model_dir, *methods):
    return [plan_trial(ModelRef(str(model_dir)), MethodSpec.parse(m), [PPL]) for m in methods]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancel_kills_a_long_trial_and_its_children_and_stores_nothing(tiny_model_dir, tmp_path, sleepy_backend):
    store = tmp_path / "store"
    sleepy_backend.write_text("")
    pids_file = sleepy_backend.parent / "pids"
    cancel = threading.Event()

    def cancel_once_hanging() -> None:  # from another thread, as a UI's Cancel button would
        deadline = time.monotonic() + 300
        while not pids_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        cancel.set()

    events: list[TrialEvent] = []
    canceller = threading.Thread(target=cancel_once_hanging)
    canceller.start()
    start = time.monotonic()
    outcomes = run_local(specs(tiny_model_dir, "sleepy", "baseline"), store, on_event=events.append, cancel=cancel)
    canceller.join()
    assert pids_file.exists(), "the trial never reached its hanging quantize step"
    assert time.monotonic() - start < 300  # the 600 s sleep was cut short

    assert [o.status for o in outcomes] == ["cancelled"]  # the baseline trial never started
    assert [e.kind for e in events if e.kind != "progress"] == ["started", "cancelled"]
    assert events[-1].outcome is outcomes[0] and events[-1].spec.method.name == "sleepy"
    assert not list(store.iterdir())  # not even a failed row or a temporary file
    worker, child = map(int, pids_file.read_text().split())
    for pid in (worker, child):
        for _ in range(50):  # the orphaned child is reaped by init shortly after the kill
            if not running(pid):
                break
            time.sleep(0.1)
        assert not running(pid), f"process {pid} survived the cancel"

    sleepy_backend.unlink()  # the same trial again, now without hanging
    [again] = run_local(specs(tiny_model_dir, "sleepy"), store)
    assert again.status == "ok"
    assert set(read_results(store).frame["status"]) == {"ok"}


def test_a_cancel_between_trials_starts_no_further_trial(tiny_model_dir, tmp_path):
    cancel = threading.Event()
    events: list[TrialEvent] = []

    def on_event(event: TrialEvent) -> None:
        events.append(event)
        if event.kind == "finished":
            cancel.set()

    outcomes = run_local(specs(tiny_model_dir, "baseline", "baseline:dtype=bfloat16"), tmp_path, on_event=on_event,
                         cancel=cancel)  # fmt: skip
    assert [o.status for o in outcomes] == ["ok", "cancelled"]
    assert [(e.kind, e.index) for e in events if e.kind != "progress"] == [("started", 1), ("finished", 1),
                                                                            ("cancelled", 2)]  # fmt: skip
    assert read_results(tmp_path).frame["trial_key"].nunique() == 1


def test_a_worker_dies_with_the_sweep_that_started_it(tiny_model_dir, tmp_path, sleepy_backend):
    """A sweep killed outright (SIGKILL: no Python cleanup runs) takes its worker with it."""
    import os
    import signal
    import subprocess
    import sys

    sleepy_backend.write_text("")
    pids_file = sleepy_backend.parent / "pids"
    script = (
        "import sys; from pathlib import Path; from quantbench.runner.executor import run_local;"
        "from quantbench.runner.trial import plan_trial; from quantbench.spec import *;"
        f"spec = plan_trial(ModelRef({str(tiny_model_dir)!r}), MethodSpec('sleepy'), [EvalSpec('perplexity', {{}})]);"
        f"run_local([spec], Path({str(tmp_path / 'store')!r}))"
    )
    sweep = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 300
        while not pids_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker, child = map(int, pids_file.read_text().split())
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
        for _ in range(100):
            if not running(worker):
                break
            time.sleep(0.1)
        assert not running(worker), "the worker outlived its sweep"
    finally:
        sweep.kill()
        if pids_file.exists():  # the worker's own child is not the guard's business: clean it up
            child = int(pids_file.read_text().split()[1])
            if running(child):
                os.kill(child, signal.SIGKILL)
