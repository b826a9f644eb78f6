"""Every evaluation, by name. Each module exposes `Params` (pydantic) and
`run(model, params, corpus) -> list[(metric, value, unit)]`."""

from __future__ import annotations

import importlib
from types import ModuleType

from quantbench.errors import QuantbenchError

EVALS: dict[str, str] = {
    "perplexity": "quantbench.evals.perplexity",
}


def get_eval(name: str) -> ModuleType:
    target = EVALS.get(name)
    if target is None:
        raise QuantbenchError(f"unknown eval {name!r}; valid evals: {', '.join(sorted(EVALS))}")
    return importlib.import_module(target)
