"""Faults while a sweep runs, with the real CLI in subprocesses on the tiny model: SIGKILL at
random moments, a worker that hangs (with a child of its own), a full disk. Two sweeps on one
store, read by the dashboard meanwhile: test_ui_concurrency.py."""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from cli_runs import (
    CLI,
    METHODS,
    assert_store_is_clean,
    hidden_entries,
    isolated_env,
    run_cli,
    sweep_file,
    synthetic_trial,
)
from support import ROOT

from quantbench.results.store import read_results, result_files, write_trial
from quantbench.runner.sweep import load_sweep

KILLS = int(os.environ.get("QB_KILLS", "20"))
# Kills land uniformly in [0, KILL_WINDOW_S) after a sweep starts: its start-up, then a trial or two
# (about 4 s each on an idle 2-core machine: mostly the worker importing torch).
KILL_WINDOW_S = float(os.environ.get("QB_KILL_WINDOW_S", "10"))
# Per-trial timeout of the hang test: long enough for the tiny baseline trial after the hang to
# finish in time on a loaded machine.
HANG_TIMEOUT_S = int(os.environ.get("QB_HANG_TIMEOUT_S", "30"))


def finished_labels(stderr: str, labels: list[str]) -> set[str]:
    """Labels of the trials the sweep reported finished ok: "[i/n] LABEL on …" then "[i/n] ok in …";
    that line is printed only after the worker wrote the trial's file."""
    started: dict[str, str] = {}
    done = set()
    for line in stderr.splitlines():
        if m := re.match(r"\[(\d+)/\d+\] (\S+) on ", line):
            started[m.group(1)] = m.group(2)
        elif (m := re.match(r"\[(\d+)/\d+\] ok in ", line)) and m.group(1) in started:
            done.add(started[m.group(1)])
    assert done <= set(labels)
    return done


def test_sigkill_at_random_moments_loses_no_finished_trial(tmp_path, tiny_model_dir):
    seed = int(os.environ.get("QB_KILL_SEED", random.randrange(2**32)))
    print(f"\nSIGKILL test: seed {seed} (QB_KILL_SEED to repeat), {KILLS} kills, window {KILL_WINDOW_S} s")
    rng = random.Random(seed)
    env = isolated_env(tmp_path)
    path = sweep_file(tmp_path, tiny_model_dir, METHODS)
    _, specs = load_sweep(path)
    key_of = {s.method.label: s.key for s in specs}
    kills = rounds = leftovers = 0
    store = tmp_path / "store-0"
    started = time.monotonic()
    while kills < KILLS:
        proc = subprocess.Popen([*CLI, "sweep", str(path), "--store", str(store)], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        delay = rng.uniform(0, KILL_WINDOW_S)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            try:
                workers = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                workers = []  # it finished just now
            proc.send_signal(signal.SIGKILL)
            kills += 1
            # The worker dies with its sweep (the kernel's parent-death signal), so nothing keeps writing.
            _, alive = psutil.wait_procs(workers, timeout=30)
            assert alive == [], f"workers outlived the killed sweep: {alive}"
        stderr = proc.communicate()[1]
        assert "Traceback" not in stderr
        # Every trial reported finished is in the store, ok; readers see no error and no partial file.
        in_store = read_results(store).frame
        ok_keys = set(in_store.loc[in_store["status"] == "ok", "trial_key"]) if not in_store.empty else set()
        assert {key_of[label] for label in finished_labels(stderr, list(key_of))} <= ok_keys
        assert_store_is_clean(store)
        leftovers += len(hidden_entries(store))
        if proc.returncode == 0:  # this sweep ran to its end before the kill: check it, start afresh
            assert ok_keys == set(key_of.values())
            rounds += 1
            store = tmp_path / f"store-{rounds}"
    # A resume completes the rest, with each trial once.
    done = run_cli(["sweep", str(path), "--store", str(store)], env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = read_results(store).frame
    assert set(frame["trial_key"]) == set(key_of.values()) and set(frame["status"]) == {"ok"}
    assert sorted(p.stem for p in result_files(store)) == sorted(key_of.values())
    assert_store_is_clean(store)
    print(f"{kills} kills in {time.monotonic() - started:.0f} s, {rounds} sweeps completed between kills, "
          f"{leftovers} hidden temporaries seen after kills")  # fmt: skip


def test_a_hanging_worker_and_its_children_are_killed_and_the_sweep_goes_on(tmp_path, tiny_model_dir):
    child_pid = tmp_path / "child.pid"
    env = isolated_env(
        tmp_path,
        PYTHONPATH=os.pathsep.join(
            [str(ROOT / "tests" / "robustness"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
        QUANTBENCH_BACKENDS="hanging-child=hang_backend:HangingWithChildBackend",
        QB_CHILD_PID=str(child_pid),
    )
    path = sweep_file(tmp_path, tiny_model_dir, ["hanging-child", "baseline"])
    store = tmp_path / "store"
    args = ["sweep", str(path), "--store", str(store), "--timeout", str(HANG_TIMEOUT_S)]
    done = run_cli(args, env, cwd=tmp_path, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    frame = read_results(store).frame
    by_method = frame.drop_duplicates("trial_key").set_index("method")
    assert by_method.loc["hanging-child", "status"] == "failed"
    assert by_method.loc["hanging-child", "error"].startswith(f"timed out after {HANG_TIMEOUT_S} s (worker killed)")
    assert by_method.loc["baseline", "status"] == "ok"  # the sweep went on
    # The worker's own child went with it (the whole process group is killed).
    pid = int(child_pid.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _limit_file_size(limit: int):
    def apply() -> None:
        # Writes past `limit` bytes fail with EFBIG, as on a full disk; without the signal ignored
        # the kernel would kill the writer instead (CPython ignores it too; this does not rely on it).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_on_store_write_is_one_line_and_the_store_still_reads(tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    write_trial(store, "earlier", synthetic_trial("earlier"))
    args = ["run", "--model", str(tiny_model_dir), "--seq-len", "32", "--max-tokens", "64", "--store", str(store)]
    # A trial's file is about 8 KiB; everything else a run writes (its spec, the worker's outcome, hash
    # memos) is well under 4 KiB, so only the store write hits the limit.
    done = subprocess.run([*CLI, *args], env=isolated_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, preexec_fn=_limit_file_size(4096))  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if " error " in line or line.startswith("quantbench: error")]
    assert len(errors) == 1 and errors[0].endswith(f"cannot write results to {store}: File too large"), done.stderr
    assert [p.name for p in store.iterdir()] == ["earlier.parquet"]  # no partial file, temporary or not
    contents = read_results(store)
    assert contents.skipped == [] and set(contents.frame["trial_key"]) == {"earlier"}


def _workers_of(tmp: Path) -> list[psutil.Process]:
    """Running trial workers started by this test (their environment points into its tmp dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            mine = proc.environ().get("QUANTBENCH_CACHE", "").startswith(str(tmp))
            if "quantbench.runner.worker" in cmdline and mine and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass  # it ended meanwhile, or belongs to someone else
    return found


@pytest.fixture(autouse=True)
def _no_stray_workers(tmp_path):
    """Whatever a test starts, no worker of it may outlive it."""
    yield
    deadline = time.monotonic() + 30
    while (stray := _workers_of(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stray == [], f"workers still running after the test: {[p.pid for p in stray]}"
