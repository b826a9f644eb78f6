"""Every quantization method, by name. Imported lazily, so listing methods never imports a library."""

from __future__ import annotations

import importlib

from quantbench.backends.base import Backend
from quantbench.errors import QuantbenchError

BACKENDS: dict[str, str] = {
    "baseline": "quantbench.backends.baseline:BaselineBackend",
    "rtn": "quantbench.backends.rtn:RtnBackend",
    "triton": "quantbench.backends.triton:TritonBackend",
    "bnb": "quantbench.backends.bnb:BnbBackend",
    "torchao": "quantbench.backends.torchao:TorchaoBackend",
    "quanto": "quantbench.backends.quanto:QuantoBackend",
    "hqq": "quantbench.backends.hqq:HqqBackend",
    "gptq": "quantbench.backends.gptq:GptqBackend",
    "awq": "quantbench.backends.awq:AwqBackend",
}


def get_backend(name: str) -> Backend:
    target = BACKENDS.get(name)
    if target is None:
        raise QuantbenchError(f"unknown method {name!r}; valid methods: {', '.join(sorted(BACKENDS))}")
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)()
