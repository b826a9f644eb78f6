"""Run a list of planned trials: skip what the store already has, check every input first, then
run each trial in its own worker process, one at a time, reporting progress as events."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quantbench.errors import QuantbenchError
from quantbench.runner.trial import PreparedTrial, TrialOutcome, completed_keys, prepare_trial
from quantbench.runner.worker import run_in_worker
from quantbench.spec import TrialSpec


@dataclass(frozen=True)
class TrialEvent:
    """Progress of a sweep, for the CLI's lines and the UI's progress bar."""

    kind: str  # skipped | started | finished
    index: int  # 1-based position among the trials that run
    total: int
    spec: TrialSpec
    outcome: TrialOutcome | None = None
    elapsed_s: float = 0.0  # of this trial
    eta_s: float | None = None  # for the rest of the sweep, from the mean trial time so far


def pending_trials(
    specs: list[TrialSpec], store: Path, force: bool, on_event: Callable[[TrialEvent], None]
) -> tuple[list[TrialOutcome], list[PreparedTrial]]:
    """Outcomes for the trials the store already has, and the others prepared (inputs checked)."""
    done = set() if force else completed_keys(store)
    skipped = [TrialOutcome(spec, "skipped") for spec in specs if spec.key in done]
    for outcome in skipped:
        on_event(TrialEvent("skipped", 0, len(specs), outcome.spec, outcome))
    # Check every input before the first trial starts: a typo in the last method fails now.
    return skipped, [prepare_trial(spec, store) for spec in specs if spec.key not in done]


def run_local(
    specs: list[TrialSpec],
    store: Path,
    force: bool = False,
    timeout_s: float | None = None,
    on_event: Callable[[TrialEvent], None] = lambda event: None,
) -> list[TrialOutcome]:
    """Run `specs` in worker processes; a QuantbenchError raised inside one trial is reported
    as its outcome ("error", nothing stored) and the sweep goes on."""
    outcomes, prepared = pending_trials(specs, store, force, on_event)
    durations: list[float] = []
    for index, trial in enumerate(prepared, start=1):
        on_event(TrialEvent("started", index, len(prepared), trial.spec))
        start = time.perf_counter()
        try:
            outcome = run_in_worker(trial, store, timeout_s)
        except QuantbenchError as exc:
            outcome = TrialOutcome(trial.spec, "error", error=str(exc))
        durations.append(time.perf_counter() - start)
        eta = statistics.fmean(durations) * (len(prepared) - index)
        outcomes.append(outcome)
        on_event(TrialEvent("finished", index, len(prepared), trial.spec, outcome, durations[-1], eta))
    return outcomes
