"""Every quantization method, by name. Listing methods never imports a library: a built-in method is
a module of this package, found by its file name, and imported only when `get_backend` asks for it.

A new built-in method is one file, `quantbench/backends/<name>.py`, defining one `Backend` subclass
whose `name` is `<name>`; nothing here changes. Your own adapter plugs in without editing this package:
set `QUANTBENCH_BACKENDS="mine=my_package.module:MyBackend"` (several separated by `;`).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantbench.backends.base import Backend, MethodParams
from quantbench.errors import QuantbenchError
from quantbench.spec import MethodSpec, validate_params

# The modules of this package that hold the contract, not a method. A helper module shared by
# several methods goes here too.
CONTRACT_MODULES = frozenset({"base", "layers", "layout", "registry", "unit_bits"})


def builtin_backends() -> dict[str, str]:
    """Method name -> module, for every module of this package outside the contract: the baseline
    first (the reference the others are read against), then by name."""
    package = Path(__file__).parent
    names = [m.name for m in pkgutil.iter_modules([str(package)]) if m.name not in CONTRACT_MODULES]
    return {name: f"{__package__}.{name}" for name in sorted(names, key=lambda name: (name != "baseline", name))}


BACKENDS: dict[str, str] = builtin_backends()


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
    """The adapter called `name`: a built-in module's `Backend` subclass of that name, or the class a
    $QUANTBENCH_BACKENDS entry names."""
    names = backend_names()
    target = names.get(name)
    if target is None:
        raise QuantbenchError(f"unknown method {name!r}; valid methods: {', '.join(sorted(names))}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        return (getattr(module, class_name) if class_name else _backend_class(module, name))()
    except (ImportError, AttributeError) as exc:
        raise QuantbenchError(f"method {name!r}: cannot import {target} ({exc})") from None


def _backend_class(module: Any, name: str) -> type[Backend]:
    """The `Backend` subclass defined in `module` whose `name` is `name`."""
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Backend)
            and value.__module__ == module.__name__
            and getattr(value, "name", None) == name
        ):
            return value
    raise AttributeError(f"{module.__name__} defines no Backend subclass with name = {name!r}")


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
    """The contract flags a user picks a method by, and its note, as the CLI and the dashboard list them."""
    calibration = "calibrates on text (calibration=...)" if backend.requires_calibration else "no calibration text"
    saves = "saves its quantized checkpoint" if backend.is_serializable else "cannot save its quantized model"
    return f"{calibration}; {saves}" + (f"; {backend.note}" if backend.note else "")


def stored_params(name: str, params: Mapping[str, Any]) -> MethodParams:
    """The parameters of a stored trial of method `name` (`params_json`, which records every field,
    defaults too). Defaults are dropped before validating: a cross-field check rejects options the
    user did not give (bnb's 4-bit `quant_type` under bits=8)."""
    backend = get_backend(name)
    defaults = backend.Params().model_dump(mode="json")
    changed = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    return validate_params(backend.Params, changed, f"method {name!r}")
