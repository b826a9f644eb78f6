"""Each trial's log: what its worker and the libraries it calls print (progress bars, warnings,
notices about optional kernels), kept beside the results as `<store>/logs/<trial key>.log` rather
than on the terminal. A side folder: readers of the store look only at its top-level Parquet files.

The sweep's own process imports the libraries too, to check that each method is available before
the first trial starts; what they print then goes to `<store>/logs/sweep.log`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from quantbench.errors import QuantbenchError

LOGS = "logs"
SWEEP = "sweep"  # the log name of what the sweep's own process prints (`quantbench log sweep`)
KEY = re.compile(r"[0-9A-Za-z_-]+")  # what a trial key is made of; anything else could name another file
# One redirect at a time per process: two sweeps checking at once in the dashboard's process would
# otherwise each save the other's redirect as "the terminal" and restore it, losing stdout for good.
_REDIRECTING = threading.Lock()


def log_path(store: Path, trial_key: str) -> Path:
    return store / LOGS / f"{trial_key}.log"


def open_for_writing(store: Path, trial_key: str) -> int:
    """A file descriptor on the trial's log, emptied: a re-run's log replaces the last one."""
    path = log_path(store, trial_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)


def tail(store: Path, trial_key: str, lines: int) -> list[str]:
    """The last `lines` lines of the trial's log (empty when there is none)."""
    try:
        text = log_path(store, trial_key).read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines(keepends=True)[-lines:]


def remove(store: Path, trial_key: str) -> None:
    """Drop the log of a trial that left nothing in the store (bad input, cancelled), and the folder if
    that was its last log, so such a run leaves the store as it found it."""
    log_path(store, trial_key).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # other logs remain, or another sweep just wrote one
        (store / LOGS).rmdir()


def read_log(store: Path, trial_key: str) -> str:
    """The whole log of a trial; QuantbenchError when the store has none for that key."""
    if not KEY.fullmatch(trial_key):
        raise QuantbenchError(f"{trial_key!r} is not a trial key (letters, digits, - and _ only)")
    path = log_path(store, trial_key)
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        why = "trials run before logs were kept have none"
        raise QuantbenchError(f"no log for trial {trial_key!r} in {store} ({why})") from None


@contextlib.contextmanager
def to_sweep_log(store: Path) -> Iterator[None]:
    """Send whatever this process writes to its stdout and stderr during the block (file descriptors
    1 and 2, so a library's C code and its print()s alike) to the end of the store's sweep log rather
    than the terminal. When the block raises, the lines go to stderr after all: they may say why.

    Other threads' output in that time goes the same way: the descriptors belong to the process.
    """
    with _REDIRECTING, tempfile.TemporaryFile() as captured:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        failed = True
        try:
            for target in (1, 2):
                os.dup2(captured.fileno(), target)
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for target, original in zip((1, 2), saved, strict=True):
                os.dup2(original, target)
                os.close(original)
            captured.seek(0)
            text = captured.read()
            if text and (failed or not _append(log_path(store, SWEEP), text)):
                os.write(2, text)


def _append(path: Path, text: bytes) -> bool:
    """Whether `text` was added to the end of the file at `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as log:
            log.write(text)
    except OSError:
        return False
    return True
