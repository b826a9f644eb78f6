"""Run a list of planned trials: skip what the store already has, check every input first, then
run each trial in its own worker process, one at a time, reporting progress as events."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quantbench.errors import QuantbenchError
from quantbench.runner import trial_log
from quantbench.runner.trial import PreparedTrial, TrialOutcome, completed_keys, prepare_trial
from quantbench.runner.worker import run_in_worker
from quantbench.spec import TrialSpec


@dataclass(frozen=True)
class TrialEvent:
    """Progress of a sweep, for the CLI's lines and the UI's progress bar.

    kind: skipped | started | progress | finished | cancelled. A "progress" event says which
    `stage` the running trial is in ("load", "quantize", or an eval's name) and how many of its
    units are `done` out of `todo` (0 = unknown); `trial_eta_s` is the rest of that stage at the
    rate so far. "cancelled" carries the trial that was running when the cancel came (its
    outcome has status "cancelled") and ends the sweep.
    """

    kind: str
    index: int  # 1-based position among the trials that run
    total: int
    spec: TrialSpec
    outcome: TrialOutcome | None = None
    elapsed_s: float = 0.0  # of this trial
    eta_s: float | None = None  # for the rest of the sweep, from the mean trial time so far
    stage: str = ""
    done: int = 0
    todo: int = 0
    trial_eta_s: float | None = None


def pending_trials(
    specs: list[TrialSpec], store: Path, force: bool, on_event: Callable[[TrialEvent], None]
) -> tuple[list[TrialOutcome], list[PreparedTrial]]:
    """Outcomes for the trials the store already has, and the others prepared (inputs checked)."""
    done = set() if force else completed_keys(store)
    skipped = [TrialOutcome(spec, "skipped") for spec in specs if spec.key in done]
    for outcome in skipped:
        on_event(TrialEvent("skipped", 0, len(specs), outcome.spec, outcome))
    # Check every input before the first trial starts: a typo in the last method fails now. The checks
    # import the methods' libraries here too, whose notices belong in a log, not between the progress lines.
    with trial_log.to_sweep_log(store):
        prepared = [prepare_trial(spec, store) for spec in specs if spec.key not in done]
    return skipped, prepared


class _StageClock:
    """Turns a worker's (stage, done, todo) updates into progress events with a stage ETA."""

    def __init__(
        self,
        index: int,
        total: int,
        spec: TrialSpec,
        sweep_eta: Callable[[float], float | None],
        on_event: Callable[[TrialEvent], None],
    ) -> None:
        self.index, self.total, self.spec, self.sweep_eta, self.on_event = index, total, spec, sweep_eta, on_event
        self.trial_start = time.perf_counter()
        self.stage, self.stage_start = "", self.trial_start

    def __call__(self, stage: str, done: int, todo: int) -> None:
        self.on_event(self.event(stage, done, todo))

    def event(self, stage: str, done: int, todo: int) -> TrialEvent:
        now = time.perf_counter()
        if stage != self.stage:
            self.stage, self.stage_start = stage, now
        eta = None
        if todo and 0 < done <= todo:
            eta = (now - self.stage_start) / done * (todo - done)
        elapsed = now - self.trial_start
        return TrialEvent("progress", self.index, self.total, self.spec, None, elapsed, self.sweep_eta(elapsed),
                          stage, done, todo, eta)  # fmt: skip


def run_local(
    specs: list[TrialSpec],
    store: Path,
    force: bool = False,
    timeout_s: float | None = None,
    on_event: Callable[[TrialEvent], None] = lambda event: None,
    cancel: threading.Event | None = None,
) -> list[TrialOutcome]:
    """Run `specs` in worker processes; a QuantbenchError raised inside one trial is reported
    as its outcome ("error", nothing stored) and the sweep goes on.

    Events reach `on_event` on the calling thread. Setting `cancel` (from another thread) kills
    the running worker at once: its outcome is "cancelled", nothing of it is stored, a
    "cancelled" event is emitted and no further trial starts; run_local returns normally with
    the outcomes so far.
    """
    outcomes, prepared = pending_trials(specs, store, force, on_event)
    durations: list[float] = []

    def sweep_eta(index: int, elapsed: float) -> float | None:
        if not durations:
            return None
        mean = statistics.fmean(durations)
        return max(mean - elapsed, 0.0) + mean * (len(prepared) - index)

    for index, trial in enumerate(prepared, start=1):
        if cancel is not None and cancel.is_set():  # set between two trials: the next one never starts
            outcomes.append(TrialOutcome(trial.spec, "cancelled"))
            on_event(TrialEvent("cancelled", index, len(prepared), trial.spec, outcomes[-1]))
            break
        on_event(TrialEvent("started", index, len(prepared), trial.spec))
        clock = _StageClock(index, len(prepared), trial.spec, lambda elapsed, i=index: sweep_eta(i, elapsed), on_event)
        try:
            outcome = run_in_worker(trial, store, timeout_s, on_progress=clock, cancel=cancel)
        except QuantbenchError as exc:
            outcome = TrialOutcome(trial.spec, "error", error=str(exc))
        elapsed = time.perf_counter() - clock.trial_start
        outcomes.append(outcome)
        if outcome.status == "cancelled":
            on_event(TrialEvent("cancelled", index, len(prepared), trial.spec, outcome, elapsed))
            break
        durations.append(elapsed)
        eta = statistics.fmean(durations) * (len(prepared) - index)
        on_event(TrialEvent("finished", index, len(prepared), trial.spec, outcome, elapsed, eta))
    return outcomes
