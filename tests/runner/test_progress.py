"""Per-trial progress: the worker reports stages and units on its own pipe, the executor turns them
into events on the caller's thread, and the CLI draws them."""

import io
import threading

import pytest

from quantbench.app import cli
from quantbench.runner.executor import TrialEvent, run_local
from quantbench.runner.trial import plan_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef

LATENCY = {"prompt_lengths": [16], "batch_sizes": [1, 2], "new_tokens": 4, "repeats": 1, "warmup": 0,
           "min_seconds": 0}  # fmt: skip


def test_a_trial_reports_load_quantize_and_each_eval_with_its_units(tiny_model_dir, tmp_path, capfd):
    evals = [EvalSpec("perplexity", {"seq_len": 32, "max_tokens": 320}), EvalSpec("latency", LATENCY)]
    spec = plan_trial(ModelRef(str(tiny_model_dir)), MethodSpec("baseline"), evals)
    events: list[TrialEvent] = []
    threads = set()

    def on_event(event: TrialEvent) -> None:
        events.append(event)
        threads.add(threading.get_ident())

    [outcome] = run_local([spec], tmp_path, on_event=on_event)
    assert outcome.status == "ok"
    assert threads == {threading.get_ident()}  # events arrive on the caller's thread
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and set(kinds[1:-1]) == {"progress"}
    progress = [e for e in events if e.kind == "progress"]
    stages = list(dict.fromkeys(e.stage for e in progress))
    assert stages == ["load", "quantize", "perplexity", "latency"]
    # 320 tokens in windows of 32: 10 windows; latency: first call + 1 prefill length + 2 batch sizes
    assert progress[-1].stage == "latency" and (progress[-1].done, progress[-1].todo) == (4, 4)
    ppl = [e for e in progress if e.stage == "perplexity"]
    assert (ppl[0].done, ppl[0].todo) == (0, 0) and (ppl[-1].done, ppl[-1].todo) == (10, 10)
    assert all(e.index == 1 and e.total == 1 and e.spec == spec for e in progress)
    assert all(e.trial_eta_s is None for e in progress if not e.todo)
    assert ppl[-1].trial_eta_s == 0
    elapsed = [e.elapsed_s for e in progress]
    assert elapsed == sorted(elapsed)
    # Progress has its own pipe: none of it shows up in the worker's stderr (relayed to ours).
    assert '"stage"' not in capfd.readouterr().err


def event(kind="progress", stage="perplexity", done=3, todo=10, **extra):
    spec = plan_trial(ModelRef("org/model"), MethodSpec("baseline"), [EvalSpec("perplexity", {})])
    return TrialEvent(kind, 2, 5, spec, stage=stage, done=done, todo=todo, **extra)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stderr(monkeypatch):
    def use(stream):
        monkeypatch.setattr(cli.sys, "stderr", stream)
        monkeypatch.setitem(cli._progress_line, "printed_at", 0.0)
        monkeypatch.setitem(cli._progress_line, "open", False)
        return stream

    return use


def test_on_a_terminal_the_progress_line_is_redrawn_in_place(stderr):
    out = stderr(Terminal())
    cli._print_event(event(done=3, trial_eta_s=14.0, eta_s=200.0))
    cli._print_event(event(done=4, trial_eta_s=12.0, eta_s=190.0))
    text = out.getvalue()
    assert text.count("\r\033[K") == 2 and "\n" not in text
    assert "[2/5] baseline:dtype=float32 perplexity [########............] 4/10 windows" in text
    assert "perplexity 12 s left; sweep about 3.2 min left" in text
    cli._print_event(event(kind="finished", outcome=cli_outcome("ok"), elapsed_s=30.0))
    assert out.getvalue().endswith("\n[2/5] ok in 30.0 s\n")  # the bar line is ended first


def test_without_a_terminal_a_trial_prints_its_start_its_end_and_a_line_per_half_minute(stderr, monkeypatch):
    out = stderr(io.StringIO())
    clock = [1000.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])
    cli._print_event(event(kind="started"))
    cli._print_event(event(stage="quantize", done=0, todo=0, elapsed_s=2.0))
    for done in range(1, 10):  # stages that start within half a minute of the last line print nothing
        clock[0] += 3
        cli._print_event(event(done=done))
    cli._print_event(event(done=9, elapsed_s=29.0))
    clock[0] += 3  # 30 s since the start line
    cli._print_event(event(done=10, trial_eta_s=0.0))
    clock[0] += 29
    cli._print_event(event(done=10))
    cli._print_event(event(kind="finished", outcome=cli_outcome("ok"), elapsed_s=62.0))
    lines = out.getvalue().splitlines()
    assert lines == [
        "[2/5] baseline:dtype=float32 on org/model (cpu) ...",
        "[2/5] baseline:dtype=float32 perplexity: 10/10 windows (perplexity 0 s left)",
        "[2/5] ok in 62.0 s",
    ]
    assert "\r" not in out.getvalue()


def cli_outcome(status):
    from quantbench.runner.trial import TrialOutcome

    return TrialOutcome(event().spec, status)
