"""Trials forked by the warm server of their interpreter: each in a fresh process whose memory peak is
its own, its libraries' output in the trial's log (not the terminal), `quantbench log KEY`."""

import os
from pathlib import Path

import pytest
from noisy_backend import BALLAST_BYTES

from quantbench.app.cli import main
from quantbench.errors import QuantbenchError
from quantbench.results.store import read_results
from quantbench.runner.executor import run_local
from quantbench.runner.trial import plan_trial
from quantbench.runner.trial_log import log_path, read_log
from quantbench.spec import EvalSpec, MethodSpec, ModelRef
from quantbench.trackers import names

HERE = Path(__file__).resolve().parent
PPL = EvalSpec("perplexity", {"seq_len": 32, "max_tokens": 64})


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """The `noisy` method for this module's workers; one environment for all its tests, so one server."""
    flags = tmp_path_factory.mktemp("noisy")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        patch.syspath_prepend(str(HERE))
        patch.setenv("QUANTBENCH_BACKENDS", "noisy=noisy_backend:NoisyBackend")
        patch.setenv("QB_NOISY_DIR", str(flags))
        yield flags
        for name in ("allocate", "die", "pids"):
            (flags / name).unlink(missing_ok=True)


def spec(model_dir, method="noisy"):
    return plan_trial(ModelRef(str(model_dir)), MethodSpec.parse(method), [PPL])


def test_each_trial_is_a_fresh_process_whose_memory_peak_is_its_own(tiny_model_dir, tmp_path, noisy):
    (noisy / "allocate").touch()
    [big] = run_local([spec(tiny_model_dir)], tmp_path / "big")
    (noisy / "allocate").unlink()
    [small, again] = run_local([spec(tiny_model_dir), spec(tiny_model_dir, "noisy:dtype=bfloat16")], tmp_path / "small")
    assert [big.status, small.status, again.status] == ["ok", "ok", "ok"]
    pids = [int(line) for line in (noisy / "pids").read_text().split()]
    assert len(set(pids)) == 3 and os.getpid() not in pids

    def quantize_peak(store: Path, key: str) -> float:
        frame = read_results(store).frame
        rows = frame[(frame["trial_key"] == key) & (frame["metric"] == names.QUANTIZE_PEAK_RSS)]
        return float(rows["value"].iloc[0])

    # The ballast of the first trial is not in the next one's peak: not the same process, nor its image.
    big_peak = quantize_peak(tmp_path / "big", big.spec.key)
    assert big_peak - quantize_peak(tmp_path / "small", small.spec.key) > 0.8 * BALLAST_BYTES


def test_a_trials_library_output_goes_to_its_log_and_the_log_command_prints_it(tiny_model_dir, tmp_path, noisy, capfd):
    store = tmp_path / "store"
    [outcome] = run_local([spec(tiny_model_dir)], store)
    assert outcome.status == "ok"
    terminal = capfd.readouterr()
    assert "noisy:" not in terminal.out + terminal.err
    log = log_path(store, outcome.spec.key).read_text()
    for line in ("noisy: a line on stdout", "noisy: a line on stderr", "UserWarning: noisy: a library warning"):
        assert line in log
    assert main(["log", outcome.spec.key, "--store", str(store)]) == 0
    assert capfd.readouterr().out == log


def test_a_worker_killed_mid_trial_fails_with_the_last_lines_of_its_log(tiny_model_dir, tmp_path, noisy):
    (noisy / "die").touch()
    try:
        [outcome] = run_local([spec(tiny_model_dir)], tmp_path / "store")
    finally:
        (noisy / "die").unlink()
    assert outcome.status == "failed" and outcome.error == "worker died (killed by SIGKILL)"
    [error] = read_results(tmp_path / "store").frame["error"].unique()
    assert error.startswith("worker died (killed by SIGKILL)\n") and "noisy: about to be killed" in error
    # The server outlived its child: the next trial is served as usual.
    [after] = run_local([spec(tiny_model_dir)], tmp_path / "store")
    assert after.status == "ok"


@pytest.mark.parametrize(
    ("key", "message"),
    [("../../etc/passwd", "is not a trial key"), ("0123abcd", "no log for trial '0123abcd'")],
)
def test_the_log_of_a_bad_or_unknown_key_is_one_line(tmp_path, key, message, capsys):
    with pytest.raises(QuantbenchError, match=message):
        read_log(tmp_path, key)
    assert main(["log", key, "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
