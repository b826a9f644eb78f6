"""Every quantization method, by name. Imported lazily, so listing methods never imports a library.

Your own adapter plugs in without editing this file: set
`QUANTBENCH_BACKENDS="mine=my_package.module:MyBackend"` (several separated by `;`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from quantbench.backends.base import Backend, MethodParams
from quantbench.errors import QuantbenchError
from quantbench.spec import MethodSpec, validate_params

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
    "gguf": "quantbench.backends.gguf:GgufBackend",
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
    and the others only where they differ from their defaults, as the trial key counts them, each
    under its stored spelling (hqq's `bits` shows as `nbits`). Parameters that do not validate
    (a form being filled in) show as given."""
    backend = get_backend(method.name)
    fields = backend.Params.model_fields
    try:
        given = validate_params(backend.Params, method.params, f"method {method.name!r}")
    except QuantbenchError:
        changed = dict(method.params)
    else:
        changed = given.model_dump(mode="json", exclude_defaults=True)
    shown = {(fields[k].serialization_alias or k): fields[k].default for k in backend.headline} | changed
    return MethodSpec(method.name, shown).label


def method_facts(backend: Backend) -> str:
    """The contract flags a user picks a method by, as the CLI and the dashboard list them."""
    calibration = "calibrates on text (calibration=...)" if backend.requires_calibration else "no calibration text"
    saves = "saves its quantized checkpoint" if backend.is_serializable else "cannot save its quantized model"
    return f"{calibration}; {saves}"


def stored_params(name: str, params: Mapping[str, Any]) -> MethodParams:
    """The parameters of a stored trial of method `name` (`params_json`, which records every field,
    defaults too). Defaults are dropped before validating: a cross-field check rejects options the
    user did not give (bnb's 4-bit `quant_type` under bits=8)."""
    backend = get_backend(name)
    defaults = backend.Params().model_dump(mode="json")
    changed = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    return validate_params(backend.Params, changed, f"method {name!r}")
