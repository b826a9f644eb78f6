"""Progress of the stage a trial is in: evals say how many units they have done out of how many.

An eval calls `report(done, todo)` as it goes (perplexity windows, latency series, task
requests, ...); the runner decides where that goes by opening `reporting(sink)` around the trial
and `stage(name)` around each step. Outside them, `report` does nothing.

Why a context-local reporter rather than a `progress` argument to every eval's `run`: the eval
contract (evals/registry.py) stays `run(model, params, corpus, source)`, so evals that report
nothing (and a later eval whose model is not a torch module) need no change, and helpers deep
inside an eval (divergence's baseline pass, lm-eval's request loop) can report without threading
a callback through every signature. A ContextVar, not a
module global, so two trials measured in one process (tests, bench scripts) never see each
other's sink; evals report from the thread that called `run`, which is where the var is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# (stage, done, todo); todo 0 means unknown.
Sink = Callable[[str, int, int], None]

_sink: ContextVar[Sink | None] = ContextVar("quantbench_progress_sink", default=None)
_stage: ContextVar[str] = ContextVar("quantbench_progress_stage", default="")


def report(done: int, todo: int = 0) -> None:
    """`done` units of the current stage are finished, out of `todo` (0 = unknown)."""
    sink = _sink.get()
    if sink is not None:
        sink(_stage.get(), done, todo)


@contextmanager
def reporting(sink: Sink) -> Iterator[None]:
    """Send every `report` made inside the block to `sink`."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the work inside the block; announces it with (name, 0, 0)."""
    token = _stage.set(name)
    try:
        report(0)
        yield
    finally:
        _stage.reset(token)
