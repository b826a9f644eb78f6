"""Every evaluation, by name. Each module exposes:

- `Params`: a pydantic model of its protocol parameters (extra keys forbidden). A field named
  like a `quantbench run` flag (`corpus`, `seq_len`, ...) takes that flag's value.
- `check_inputs(source, params, corpus)`: raise QuantbenchError for bad input, before any work.
- `run(model, params, corpus, source) -> list[(metric, value, unit)]`: measure a QuantizedModel;
  `source` is the ResolvedModel it came from (to load the unquantized reference, for example).
  A row may carry a fourth element, a note: why the metric has no value (NaN) on this model, and a
  fifth, a series: the per-window parts of the value (a sum), for paired comparisons.
- instead of `run`, an eval that needs the method itself (a sensitivity map quantizes one unit at a
  time) has `run_method(model, params, corpus, source, backend, method_params)`, and may have
  `check_method(backend, method_params)` that refuses a method before any work.
- optional `not_measurable(method, method_params, params) -> rows`: the rows this eval cannot measure
  for a method (a `Backend` and its validated parameters; e.g. a checkpoint of one that cannot be
  saved with them), each with NaN and its note.
  When it returns rows the runner stores them and does not call `run`.

Progress: an eval may call `quantbench.evals.progress.report(done, todo)` as it goes; see that
module for why this is a context-local reporter and not an argument of `run`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from quantbench.errors import QuantbenchError

EVALS: dict[str, str] = {
    "perplexity": "quantbench.evals.perplexity",
    "divergence": "quantbench.evals.divergence",
    "kv": "quantbench.evals.kv_cache",
    "tasks": "quantbench.evals.tasks",
    "latency": "quantbench.evals.latency",
    "memory": "quantbench.evals.memory",
    "sensitivity": "quantbench.evals.sensitivity",
}


def get_eval(name: str) -> ModuleType:
    target = EVALS.get(name)
    if target is None:
        raise QuantbenchError(f"unknown eval {name!r}; valid evals: {', '.join(sorted(EVALS))}")
    return importlib.import_module(target)
