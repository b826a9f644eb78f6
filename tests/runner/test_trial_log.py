"""What libraries print in the sweep's own process (imported there to check each method before the
first trial) goes to the store's sweep log, not between the sweep's progress lines."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import quantbench
from quantbench.errors import QuantbenchError
from quantbench.runner.trial_log import SWEEP, log_path, read_log, to_sweep_log

BNB_NOTICE = "gemm_4bit_forward"  # bitsandbytes on a CPU without its optional kernel package, at import


def test_output_written_during_the_block_goes_to_the_sweep_log(tmp_path, capfd):
    # The descriptors, as C code and a process the library starts write to them (pytest's capture swaps
    # sys.stdout for its own file, so a print() here would not show what it does outside pytest).
    with to_sweep_log(tmp_path):
        os.write(1, b"lib: on fd 1\n")
        subprocess.run(["sh", "-c", "echo 'lib: its child, on fd 2' >&2"], check=True)
    os.write(1, b"quantbench: progress\n")
    terminal = capfd.readouterr()
    assert terminal.out == "quantbench: progress\n" and terminal.err == ""
    assert read_log(tmp_path, SWEEP) == "lib: on fd 1\nlib: its child, on fd 2\n"
    with to_sweep_log(tmp_path):
        os.write(2, b"lib: a second sweep\n")
    assert read_log(tmp_path, SWEEP).endswith("on fd 2\nlib: a second sweep\n")  # appended


def test_when_the_block_fails_its_output_reaches_the_terminal_and_no_log_is_left(tmp_path, capfd):
    with pytest.raises(QuantbenchError, match="unavailable"), to_sweep_log(tmp_path):
        os.write(1, b"lib: why it is unavailable\n")
        raise QuantbenchError("method 'x' is unavailable")
    assert capfd.readouterr().err == "lib: why it is unavailable\n"
    assert not log_path(tmp_path, SWEEP).parent.exists()  # bad input leaves the store as it was


def test_a_block_that_prints_nothing_writes_no_log(tmp_path):
    with to_sweep_log(tmp_path):
        pass
    assert not log_path(tmp_path, SWEEP).parent.exists()


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (no library imported yet) that imports this checkout's quantbench."""
    checkout = str(Path(quantbench.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([checkout, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_real_librarys_import_notice_stays_off_the_sweeps_terminal(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    bare = _python("import bitsandbytes", tmp_path)
    if BNB_NOTICE not in bare.stdout + bare.stderr:
        pytest.skip("bitsandbytes prints no notice on this machine: nothing to keep off the terminal")
    store = tmp_path / "store"
    sweep = _python(
        "from pathlib import Path\n"
        "from quantbench.runner.executor import pending_trials\n"
        "from quantbench.runner.trial import plan_trial\n"
        "from quantbench.spec import EvalSpec, MethodSpec, ModelRef\n"
        f"spec = plan_trial(ModelRef({str(tiny_model_dir)!r}), MethodSpec.parse('bnb:bits=8'), "
        "[EvalSpec('perplexity', {'seq_len': 32, 'max_tokens': 64})])\n"
        f"_, prepared = pending_trials([spec], Path({str(store)!r}), False, print)\n"
        "print('prepared', len(prepared))\n",
        tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert sweep.stdout == "prepared 1\n" and BNB_NOTICE not in sweep.stderr
    assert BNB_NOTICE in read_log(store, SWEEP)


def test_two_sweeps_checking_at_once_leave_stdout_where_it_was(tmp_path):
    # The dashboard runs sweeps in threads of one process: the second redirect must not save the
    # first one's as "the terminal" and restore it after the first has restored the real one.
    before = os.fstat(1)
    first_in = threading.Event()

    def first():
        with to_sweep_log(tmp_path / "a"):
            first_in.set()
            time.sleep(0.2)

    def second():
        first_in.wait()
        with to_sweep_log(tmp_path / "b"):
            time.sleep(0.4)  # still redirected when the first one restores

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(1)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
