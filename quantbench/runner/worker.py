"""Run one trial in its own process.

The worker is a child forked by the fork server of the interpreter the method needs
(runner/forkserver.py, runner/envs.py): a fresh process per trial, so a trial's memory peaks are
its own, and a segfault, an OOM kill or a hang ends the worker, not the sweep. The worker writes
the trial's rows to the store itself and an outcome envelope (JSON) to a file; when it dies
without one, the parent stores a failed trial with the exit code or signal and the last lines of
its log (runner/trial_log.py), where everything the libraries print goes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from quantbench.errors import QuantbenchError
from quantbench.evals import progress
from quantbench.evals.progress import Sink as ProgressSink
from quantbench.runner import forkserver, trial_log
from quantbench.runner.environment import quiet_library_logs
from quantbench.runner.envs import worker_env
from quantbench.runner.trial import PreparedTrial, TrialOutcome, execute, prepare_trial, record_failure
from quantbench.spec import TrialSpec

STDERR_TAIL_LINES = 20
POLL_S = 0.1  # how often the parent looks at the cancel flag and the clock while a worker runs
PROGRESS_INTERVAL_S = 0.2
# What the fork server imports beyond this module (torch, quantbench's runner): what every trial
# imports whatever its method (transformers loads its model classes, and through its cache module
# torch's compiler, on first use), so no child carries a library it does not use in its RSS (the
# anonymous pages of an import count in every forked child's RSS). A method's own library is
# imported by its child, as before. A module this transformers lacks is skipped.
WARM_MODULES = (
    "transformers.modeling_utils",
    "transformers.modeling_layers",
    "transformers.masking_utils",
    "transformers.generation.candidate_generator",
    "transformers.utils.type_validators",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "pyarrow.pandas_compat",
    "quantbench.backends.baseline",
    "quantbench.evals.perplexity",
)


def run_in_worker(
    trial: PreparedTrial,
    store: Path,
    timeout_s: float | None = None,
    on_progress: ProgressSink | None = None,
    cancel: threading.Event | None = None,
) -> TrialOutcome:
    """Run a prepared trial in a child process forked by its interpreter's server; its output goes
    to the trial's log file, whose last lines a failure carries.

    `on_progress(stage, done, todo)` is called on this thread for each progress line the worker
    sends. When `cancel` is set, or the timeout passes, or this thread is interrupted, the
    worker's whole process group is killed: a cancelled trial returns status "cancelled" and
    leaves nothing in the store (the worker writes its file only when the trial is complete).
    """
    with tempfile.TemporaryDirectory(prefix="quantbench-trial-") as tmp:
        outcome_file = Path(tmp) / "outcome.json"
        request = {"spec": trial.spec.to_dict(), "store": str(store), "outcome": str(outcome_file), "cwd": os.getcwd()}
        # Progress gets its own pipe: the log is the library's voice and the failure reason's source.
        progress_read, progress_write = os.pipe()
        log_fd = trial_log.open_for_writing(store, trial.spec.key)
        server = None
        try:
            server = forkserver.server_for(trial.python, worker_env(trial.python))
            child = server.fork(request, [log_fd, progress_write])
        except OSError as exc:  # a method environment whose interpreter is gone or not executable
            os.close(progress_read)
            return record_failure(trial, store, f"cannot start the worker's interpreter {trial.python}: {exc.strerror}")
        except forkserver.ServerDied as exc:
            os.close(progress_read)
            forkserver.forget(server)
            return _died(trial, store, exc.returncode, exc.stderr_tail)
        finally:
            os.close(progress_write)  # the worker holds the only write end: EOF when it exits
            os.close(log_fd)
        try:
            ended = _watch(child, progress_read, on_progress or (lambda *_: None), cancel, timeout_s)
        except BaseException:  # Ctrl-C in the caller: the worker runs in its own group and would live on
            child.kill()
            raise
        finally:
            os.close(progress_read)
        server_tail = server.stderr_tail() if child.server_died else []
        if child.server_died:  # the next trial gets a fresh server
            forkserver.forget(server)
        tail = trial_log.tail(store, trial.spec.key, STDERR_TAIL_LINES)
        if ended == "cancelled":
            trial_log.remove(store, trial.spec.key)
            return TrialOutcome(trial.spec, "cancelled")
        if ended == "timeout":
            return record_failure(trial, store, f"timed out after {timeout_s:g} s (worker killed)", "".join(tail))
        if child.server_died:
            return _died(trial, store, child.returncode, server_tail)  # it could not import, or was killed
        if outcome_file.is_file():
            outcome = json.loads(outcome_file.read_text())
            if outcome["status"] == "error":
                trial_log.remove(store, trial.spec.key)  # bad input stores nothing, not even a log
                raise QuantbenchError(outcome["error"])
            path = Path(outcome["path"]) if outcome["path"] else None
            return TrialOutcome(trial.spec, outcome["status"], error=outcome["error"], path=path)
        return _died(trial, store, child.returncode, tail)


def _died(trial: PreparedTrial, store: Path, returncode: int, tail: list[str]) -> TrialOutcome:
    """A worker (or its server) that ended without an outcome: a failed trial with its exit and last lines."""
    reason = f"worker died ({_describe_exit(returncode)})"
    if trial.python != sys.executable:  # most often the environment itself is broken: its last word says how
        last = next((line.strip() for line in reversed(tail) if line.strip()), "")
        reason += f" in the {trial.backend.environment!r} environment" + (f": {last}" if last else "")
    return record_failure(trial, store, reason, "".join(tail))


def _watch(
    proc: forkserver.ForkedChild,
    progress_fd: int,
    on_progress: ProgressSink,
    cancel: threading.Event | None,
    timeout_s: float | None,
) -> str:
    """Pass progress lines on until the worker exits ("exited"), or kill it on cancel or timeout.

    Waits on the pipe with a short timeout rather than spinning, so the watcher costs no CPU the
    trial is measuring; the timeout bounds how late a cancel is noticed (POLL_S).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    selector = selectors.DefaultSelector()
    selector.register(progress_fd, selectors.EVENT_READ)
    pipe_open, pending = True, b""
    while True:
        if cancel is not None and cancel.is_set():
            proc.kill()
            return "cancelled"
        wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
        if wait <= 0:
            proc.kill()
            return "timeout"
        if pipe_open and selector.select(wait):
            chunk = os.read(progress_fd, 65536)
            pipe_open = bool(chunk)  # EOF: the worker closed its end by exiting
            pending = _dispatch(pending + chunk, on_progress)
        elif pipe_open:
            if proc.poll() is not None:  # nothing left to read (select said so) and the worker is gone
                return "exited"
        else:
            try:
                proc.wait(timeout=wait)
                return "exited"
            except subprocess.TimeoutExpired:
                continue


def _dispatch(data: bytes, on_progress: ProgressSink) -> bytes:
    """Call `on_progress` for each complete JSON line in `data`; return the incomplete rest."""
    *lines, rest = data.split(b"\n")
    for line in lines:
        try:
            message = json.loads(line)
            on_progress(str(message["stage"]), int(message["done"]), int(message["todo"]))
        except (ValueError, KeyError, TypeError):
            continue  # a malformed line costs one progress update, never the trial
    return rest


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _ProgressWriter:
    """The worker's end of the progress pipe: one JSON line per update, at most one per
    PROGRESS_INTERVAL_S within a stage (a tiny model scores thousands of windows a second), but
    always a stage's first and last update."""

    def __init__(self, fd: int) -> None:
        self.stream = os.fdopen(fd, "w", buffering=1)
        self.last = ("", 0.0)

    def __call__(self, stage: str, done: int, todo: int) -> None:
        now = time.monotonic()
        last_stage, last_time = self.last
        if stage == last_stage and now - last_time < PROGRESS_INTERVAL_S and not (todo and done >= todo):
            return
        self.last = (stage, now)
        with contextlib.suppress(OSError):  # the parent stopped listening; the trial itself goes on
            self.stream.write(json.dumps({"stage": stage, "done": done, "todo": todo}) + "\n")


def run_trial(request: dict, fds: list[int], start_log: str) -> int:
    """A forked child's work: its output to the trial's log (after the server's own start-up lines,
    such as a library's failed optional kernels), then the trial."""
    log_fd, progress_fd = fds
    for target in (1, 2):
        os.dup2(log_fd, target)
    os.close(log_fd)
    with contextlib.suppress(OSError):
        os.write(2, Path(start_log).read_bytes())
    os.chdir(request["cwd"])
    os.set_inheritable(progress_fd, False)  # a process the trial forks must not hold the pipe open
    store = Path(request["store"])
    with progress.reporting(_ProgressWriter(progress_fd)):
        try:
            with progress.stage("load"):  # checks inputs: resolves the model, reads and tokenizes corpora
                trial = prepare_trial(TrialSpec.from_dict(request["spec"]), store)
            outcome = execute(trial, store)
            envelope = {"status": outcome.status, "error": outcome.error, "path": str(outcome.path or "")}
        except QuantbenchError as exc:
            envelope = {"status": "error", "error": str(exc), "path": ""}
    Path(request["outcome"]).write_text(json.dumps(envelope))
    return 0


def serve(control_fd: str, start_log: str) -> int:
    """The fork server of this interpreter: import what every trial imports, then fork one child per trial."""
    forkserver.set_parent_death_signal(signal.SIGKILL)  # while importing, it dies with the sweep's thread
    quiet_library_logs()
    for module in WARM_MODULES:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(module)
    return forkserver.serve(int(control_fd), start_log, run_trial)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve"]:
        sys.exit("usage: python -m quantbench.runner.worker --serve CONTROL_FD START_LOG")
    code = serve(*sys.argv[2:])
    sys.stdout.flush()
    os._exit(code)  # tearing down torch and transformers' modules only delays the exit of a server let go
