"""Run one trial in its own process.

The worker is a fresh Python process (`python -m quantbench.runner.worker SPEC OUTCOME`), so a
trial's memory peaks are its own, and a segfault, an OOM kill or a hang ends the worker, not
the sweep. The worker writes the trial's rows to the store itself and an outcome envelope
(JSON) to a file; when it dies without one, the parent stores a failed trial with the exit
code or signal and the last lines of its stderr.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from quantbench.errors import QuantbenchError
from quantbench.runner.environment import quiet_library_logs
from quantbench.runner.trial import PreparedTrial, TrialOutcome, execute, prepare_trial, record_failure
from quantbench.spec import TrialSpec

STDERR_TAIL_LINES = 20


def run_in_worker(trial: PreparedTrial, store: Path, timeout_s: float | None = None) -> TrialOutcome:
    """Run a prepared trial in a child process; its stderr is passed through and its tail kept."""
    with tempfile.TemporaryDirectory(prefix="quantbench-trial-") as tmp:
        spec_file, outcome_file = Path(tmp) / "spec.json", Path(tmp) / "outcome.json"
        spec_file.write_text(json.dumps({"spec": trial.spec.to_dict(), "store": str(store)}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "quantbench.runner.worker", str(spec_file), str(outcome_file)],
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # so a timeout can kill the worker's own children too
        )
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        relay = threading.Thread(target=_relay, args=(proc.stderr, tail), daemon=True)
        relay.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            relay.join()
            return record_failure(trial, store, f"timed out after {timeout_s:g} s (worker killed)", "".join(tail))
        relay.join()
        if outcome_file.is_file():
            outcome = json.loads(outcome_file.read_text())
            if outcome["status"] == "error":
                raise QuantbenchError(outcome["error"])
            path = Path(outcome["path"]) if outcome["path"] else None
            return TrialOutcome(trial.spec, outcome["status"], error=outcome["error"], path=path)
        return record_failure(trial, store, f"worker died ({_describe_exit(proc.returncode)})", "".join(tail))


def _relay(stream, tail: collections.deque[str]) -> None:
    for line in stream:
        sys.stderr.write(line)
        tail.append(line)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def main(spec_file: str, outcome_file: str) -> int:
    quiet_library_logs()
    request = json.loads(Path(spec_file).read_text())
    store = Path(request["store"])
    try:
        outcome = execute(prepare_trial(TrialSpec.from_dict(request["spec"]), store), store)
        envelope = {"status": outcome.status, "error": outcome.error, "path": str(outcome.path or "")}
    except QuantbenchError as exc:
        envelope = {"status": "error", "error": str(exc), "path": ""}
    Path(outcome_file).write_text(json.dumps(envelope))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
