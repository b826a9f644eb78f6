"""A run started from the browser: `run_local` in a background thread (each trial still runs in its
own worker process), its events folded into one row per trial that the page polls.

One run at a time per app: trials compete for the same CPU cores and memory, and their timings
would be meaningless if two ran at once.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from quantbench.app.inputs import duration
from quantbench.backends.registry import method_label
from quantbench.errors import QuantbenchError
from quantbench.spec import TrialSpec

log = logging.getLogger("quantbench.ui")

PROGRESS_COLUMNS = ["#", "method", "status", "stage", "progress", "elapsed s", "ETA"]


@dataclass
class TrialRow:
    spec: TrialSpec
    status: str = "queued"  # queued | running | ok | failed | error | skipped | cancelled | interrupted | not started
    stage: str = ""  # what the worker is doing: load, quantize, or an eval's name
    done: int = 0
    todo: int = 0  # 0 = unknown
    stage_eta_s: float | None = None
    started_at: float | None = None  # time.monotonic()
    elapsed_s: float | None = None
    error: str = ""


def _runner_cancels() -> bool:
    """Whether run_local takes a `cancel` event (kills the running worker); older runners do not."""
    from quantbench.runner.executor import run_local

    return "cancel" in inspect.signature(run_local).parameters


class CancelledBeforeStart(Exception):
    """Raised from on_event to stop a runner without `cancel` before its next trial starts."""


class RunSession:
    def __init__(self, store: Path) -> None:
        self.store = store
        self._lock = threading.Lock()  # guards rows and the run's state, written by the run's thread
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self.rows: dict[str, TrialRow] = {}
        self.error = ""
        self._began_at = 0.0
        self._ended_at: float | None = None
        self._sweep_eta: tuple[float, float] | None = None  # (seconds left, when it was said)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, specs: list[TrialSpec], force: bool = False, timeout_s: float | None = None) -> None:
        with self._start_lock:  # two browser tabs pressing Start at once: one run wins
            if self.running:
                raise QuantbenchError("a run is already in progress: wait for it to finish or cancel it")
            with self._lock:
                self.rows = {spec.key: TrialRow(spec) for spec in specs}
                self.error = ""
                self._cancel = threading.Event()
                self._began_at, self._ended_at, self._sweep_eta = time.monotonic(), None, None
            self._thread = threading.Thread(target=self._run, args=(specs, force, timeout_s), daemon=True)
            self._thread.start()

    def cancel(self) -> bool:
        """Ask the run to stop; False when nothing is running."""
        if not self.running:
            return False
        self._cancel.set()
        return True

    def wait(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self, specs: list[TrialSpec], force: bool, timeout_s: float | None) -> None:
        from quantbench.runner.executor import run_local

        options = {"force": force, "timeout_s": timeout_s, "on_event": self._on_event}
        if _runner_cancels():
            options["cancel"] = self._cancel
        try:
            run_local(specs, self.store, **options)
        except CancelledBeforeStart:
            pass
        except QuantbenchError as exc:  # bad input found while preparing: nothing ran
            self.error = str(exc)
        except Exception as exc:  # a bug: keep the page alive and say so
            log.exception("run failed")
            self.error = f"unexpected {type(exc).__name__}: {exc} (a bug in quantbench; see the server log)"
        finally:
            with self._lock:
                for row in self.rows.values():
                    if row.status == "running":
                        row.status = "cancelled" if self._cancel.is_set() else "interrupted"
                    elif row.status == "queued":
                        row.status = "not started"
                self._ended_at = time.monotonic()

    def _on_event(self, event) -> None:
        now = time.monotonic()
        with self._lock:
            row = self.rows.get(event.spec.key)
            if row is None:
                return
            if event.kind == "skipped":
                row.status = "skipped"
                row.error = "already in the store (tick 'Re-run' to run it again)"
            elif event.kind == "started":
                if self._cancel.is_set() and not _runner_cancels():
                    raise CancelledBeforeStart
                row.status, row.started_at = "running", now
            elif event.kind == "progress":
                row.stage, row.done, row.todo = event.stage, event.done, event.todo
                row.stage_eta_s = event.trial_eta_s
                row.elapsed_s = None  # still running: the snapshot counts from started_at
                if event.eta_s is not None:  # the whole run's, once one trial has finished
                    self._sweep_eta = (event.eta_s, now)
            elif event.kind in ("finished", "cancelled"):
                outcome = event.outcome
                row.status = "cancelled" if event.kind == "cancelled" else outcome.status if outcome else "failed"
                row.error = (outcome.error if outcome else "") or row.error
                row.elapsed_s = event.elapsed_s or (now - row.started_at if row.started_at else None)
                row.stage_eta_s = None
                if event.eta_s is not None:
                    self._sweep_eta = (event.eta_s, now)

    def snapshot(self) -> tuple[str, pd.DataFrame, str]:
        """(one status line, one row per trial, the run's error or "") as of now."""
        now = time.monotonic()
        with self._lock:
            rows = list(self.rows.values())
            table = pd.DataFrame([_row(i, r, now) for i, r in enumerate(rows, start=1)], columns=PROGRESS_COLUMNS)
            return self._status_line(rows, now), table, self.error

    def _status_line(self, rows: list[TrialRow], now: float) -> str:
        if not rows:
            return "No run yet: queue methods, choose evals, then press **Start run**."
        counts = pd.Series([r.status for r in rows]).value_counts()
        tally = ", ".join(f"{n} {status}" for status, n in counts.items())
        if self._ended_at is not None or not self.running:
            took = (self._ended_at or now) - self._began_at
            head = "Run stopped" if self.error else "Cancelled" if self._cancel.is_set() else "Finished"
            stored = any(r.status in ("ok", "failed") for r in rows)
            return f"**{head}** after {took:.0f} s: {tally}." + (" See the **Results** tab." if stored else "")
        current = next((i for i, r in enumerate(rows, start=1) if r.status == "running"), None)
        if current is None:
            return f"Preparing: checking the model, corpus and methods ({len(rows)} trials)…"
        line = f"**Running** trial {current} of {len(rows)}: {method_label(rows[current - 1].spec.method)} ({tally})"
        if self._sweep_eta is not None:
            left = max(0.0, self._sweep_eta[0] - (now - self._sweep_eta[1]))
            line += f" · about {duration(left)} left"
        else:
            line += " · time left is estimated once the first trial ends"
        return line + (" · cancelling…" if self._cancel.is_set() else "")


def _row(index: int, row: TrialRow, now: float) -> list:
    elapsed = row.elapsed_s
    if elapsed is None and row.started_at is not None:
        elapsed = now - row.started_at
    progress = f"{row.done}/{row.todo}" if row.todo else (str(row.done) if row.done else "")
    eta = duration(row.stage_eta_s) + " (this stage)" if row.stage_eta_s is not None else ""
    status = row.status + (f": {row.error.splitlines()[0]}" if row.error and row.status != "ok" else "")
    return [
        index,
        method_label(row.spec.method),
        status,
        row.stage,
        progress,
        round(elapsed, 1) if elapsed else None,
        eta,
    ]
