"""Run trials as Ray tasks, for a cluster: one task per trial with the resources it needs
(`num_gpus=1` for CUDA trials), each task running its trial in a worker process on its node,
all writing to one store path that every node sees (a shared file system).

Events: only "skipped", "started" and "finished" (no per-trial "progress", no cancel). The
worker's progress pipe ends in the Ray task on the trial's node; bringing it back would need an
actor or a queue per sweep, which a cluster run watched through its store does not need."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError
from quantbench.runner.executor import TrialEvent, pending_trials
from quantbench.runner.trial import TrialOutcome
from quantbench.spec import TrialSpec


def run_ray(
    specs: list[TrialSpec],
    store: Path,
    force: bool = False,
    timeout_s: float | None = None,
    on_event: Callable[[TrialEvent], None] = lambda event: None,
    address: str | None = None,
) -> list[TrialOutcome]:
    try:
        import ray
    except ImportError:
        raise QuantbenchError("--executor ray needs the ray package: pip install 'ray>=2.9'") from None
    outcomes, prepared = pending_trials(specs, store, force, on_event)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    task = ray.remote(_trial_task)
    pending = {}
    for index, trial in enumerate(prepared, start=1):
        gpus = 1 if trial.spec.device == "cuda" else 0
        ref = task.options(num_cpus=1, num_gpus=gpus).remote(trial.spec.to_dict(), str(store), timeout_s)
        pending[ref] = trial.spec
        on_event(TrialEvent("started", index, len(prepared), trial.spec))
    finished = 0
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        spec = pending.pop(ref)
        envelope = ray.get(ref)
        outcome = TrialOutcome(spec, envelope["status"], error=envelope["error"])
        finished += 1
        outcomes.append(outcome)
        on_event(TrialEvent("finished", finished, len(prepared), spec, outcome, envelope["seconds"]))
    return outcomes


def _trial_task(spec: dict[str, Any], store: str, timeout_s: float | None) -> dict[str, Any]:
    """Runs on a Ray worker: check the trial on this node, then run it in its own process."""
    import time

    from quantbench.runner.trial import prepare_trial
    from quantbench.runner.worker import run_in_worker

    start = time.perf_counter()
    try:
        trial = prepare_trial(TrialSpec.from_dict(spec), Path(store))
        outcome = run_in_worker(trial, Path(store), timeout_s)
        status, error = outcome.status, outcome.error
    except QuantbenchError as exc:
        status, error = "error", str(exc)
    return {"status": status, "error": error, "seconds": time.perf_counter() - start}
