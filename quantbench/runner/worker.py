"""Run one trial in its own process.

The worker is a fresh Python process (`python -m quantbench.runner.worker SPEC OUTCOME`), started
with the interpreter of the environment the method needs (runner/envs.py), so a trial's memory
peaks are its own, and a segfault, an OOM kill or a hang ends the worker, not
the sweep. The worker writes the trial's rows to the store itself and an outcome envelope
(JSON) to a file; when it dies without one, the parent stores a failed trial with the exit
code or signal and the last lines of its stderr.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
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
from quantbench.runner.environment import quiet_library_logs
from quantbench.runner.envs import worker_env
from quantbench.runner.trial import PreparedTrial, TrialOutcome, execute, prepare_trial, record_failure
from quantbench.spec import TrialSpec

STDERR_TAIL_LINES = 20
POLL_S = 0.1  # how often the parent looks at the cancel flag and the clock while a worker runs
PROGRESS_INTERVAL_S = 0.2
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run_in_worker(
    trial: PreparedTrial,
    store: Path,
    timeout_s: float | None = None,
    on_progress: ProgressSink | None = None,
    cancel: threading.Event | None = None,
) -> TrialOutcome:
    """Run a prepared trial in a child process; its stderr is passed through and its tail kept.

    `on_progress(stage, done, todo)` is called on this thread for each progress line the worker
    sends. When `cancel` is set, or the timeout passes, or this thread is interrupted, the
    worker's whole process group is killed: a cancelled trial returns status "cancelled" and
    leaves nothing in the store (the worker writes its file only when the trial is complete).
    """
    with tempfile.TemporaryDirectory(prefix="quantbench-trial-") as tmp:
        spec_file, outcome_file = Path(tmp) / "spec.json", Path(tmp) / "outcome.json"
        spec_file.write_text(json.dumps({"spec": trial.spec.to_dict(), "store": str(store)}))
        # Progress gets its own pipe: stderr is the library's voice and the failure reason's source.
        progress_read, progress_write = os.pipe()
        try:
            proc = subprocess.Popen(
                [trial.python, "-m", "quantbench.runner.worker", str(spec_file), str(outcome_file),
                 str(progress_write)],
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                pass_fds=(progress_write,),
                start_new_session=True,  # its own process group, so a kill reaches the worker's children too
                env=worker_env(trial.python),
            )  # fmt: skip
        except OSError as exc:  # a method environment whose interpreter is gone or not executable
            os.close(progress_read)
            return record_failure(trial, store, f"cannot start the worker's interpreter {trial.python}: {exc.strerror}")
        finally:
            os.close(progress_write)  # the worker holds the only write end: EOF when it exits
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        relay = threading.Thread(target=_relay, args=(proc.stderr, tail), daemon=True)
        relay.start()
        try:
            ended = _watch(proc, progress_read, on_progress or (lambda *_: None), cancel, timeout_s)
        except BaseException:  # Ctrl-C in the caller: the worker runs in its own session and would live on
            _kill_group(proc)
            raise
        finally:
            os.close(progress_read)
            relay.join()
        if ended == "cancelled":
            return TrialOutcome(trial.spec, "cancelled")
        if ended == "timeout":
            return record_failure(trial, store, f"timed out after {timeout_s:g} s (worker killed)", "".join(tail))
        if outcome_file.is_file():
            outcome = json.loads(outcome_file.read_text())
            if outcome["status"] == "error":
                raise QuantbenchError(outcome["error"])
            path = Path(outcome["path"]) if outcome["path"] else None
            return TrialOutcome(trial.spec, outcome["status"], error=outcome["error"], path=path)
        reason = f"worker died ({_describe_exit(proc.returncode)})"
        if trial.python != sys.executable:  # most often the environment itself is broken: its last word says how
            last = next((line.strip() for line in reversed(tail) if line.strip()), "")
            reason += f" in the {trial.backend.environment!r} environment" + (f": {last}" if last else "")
        return record_failure(trial, store, reason, "".join(tail))


def _watch(
    proc: subprocess.Popen,
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
            _kill_group(proc)
            return "cancelled"
        wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
        if wait <= 0:
            _kill_group(proc)
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


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the process that started it dies. The worker
    runs in its own session (so a timeout or cancel can kill its group), which also means a sweep
    killed outright would otherwise leave it running."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return  # not glibc: no such guard
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the guard was set
        os._exit(1)


def main(spec_file: str, outcome_file: str, progress_fd: str | None = None) -> int:
    _die_with_parent()
    quiet_library_logs()
    request = json.loads(Path(spec_file).read_text())
    store = Path(request["store"])
    sink: ProgressSink = lambda *_: None  # noqa: E731
    if progress_fd is not None:
        os.set_inheritable(int(progress_fd), False)  # a process the trial forks must not hold the pipe open
        sink = _ProgressWriter(int(progress_fd))
    with progress.reporting(sink):
        try:
            with progress.stage("load"):  # checks inputs: resolves the model, reads and tokenizes corpora
                trial = prepare_trial(TrialSpec.from_dict(request["spec"]), store)
            outcome = execute(trial, store)
            envelope = {"status": outcome.status, "error": outcome.error, "path": str(outcome.path or "")}
        except QuantbenchError as exc:
            envelope = {"status": "error", "error": str(exc), "path": ""}
    Path(outcome_file).write_text(json.dumps(envelope))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
