"""Every quantization method, by name. Imported lazily, so listing methods never imports a library.

Your own adapter plugs in without editing this file: set
`QUANTBENCH_BACKENDS="mine=my_package.module:MyBackend"` (several separated by `;`).
"""

from __future__ import annotations

import importlib
import os

from quantbench.backends.base import Backend
from quantbench.errors import QuantbenchError
from quantbench.spec import MethodSpec

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


def backend_names() -> dict[str, str]:
    """Built-in adapters plus those named in $QUANTBENCH_BACKENDS."""
    extra = {}
    for item in filter(None, os.environ.get("QUANTBENCH_BACKENDS", "").split(";")):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise QuantbenchError(f"QUANTBENCH_BACKENDS: expected name=module:Class, got {item!r}")
        extra[name.strip()] = target.strip()
    return {**BACKENDS, **extra}


def get_backend(name: str) -> Backend:
    names = backend_names()
    target = names.get(name)
    if target is None:
        raise QuantbenchError(f"unknown method {name!r}; valid methods: {', '.join(sorted(names))}")
    module_name, _, class_name = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)()
    except (ImportError, AttributeError) as exc:
        raise QuantbenchError(f"method {name!r}: cannot import {target} ({exc})") from None


def method_label(method: MethodSpec) -> str:
    """`name:key=value,...` with the method's headline parameters always shown (defaults filled in)
    and the others only where they differ from their defaults, as the trial key counts them."""
    backend = get_backend(method.name)
    shown = {k: backend.Params.model_fields[k].default for k in backend.headline} | dict(method.params)
    return MethodSpec(method.name, shown).label


def method_facts(backend: Backend) -> str:
    """The contract flags a user picks a method by, as the CLI and the dashboard list them."""
    calibration = "calibrates on text (calibration=...)" if backend.requires_calibration else "no calibration text"
    saves = "saves its quantized checkpoint" if backend.is_serializable else "cannot save its quantized model"
    return f"{calibration}; {saves}"
