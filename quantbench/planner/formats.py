"""Which storage layout a plan prices: the method's own (`Backend.layout`), for plan parameters.

Plans take a method's parameters under the names its backend gives them (`hqq:bits=3`,
`quanto:weights=int4`, `compute_dtype=float16`; stored spellings such as `nbits` too). What a
plan leaves out is filled with the settings people deploy: bf16 compute, and the backend's
`plan_defaults` (gptq/awq groups of 128, where their trials default to 64 for the embedded model).

The layouts were checked against the tensors the installed libraries actually keep in a quantized
`nn.Linear(512, 1024)` in bf16 (state_dict sizes, 2026-11: bitsandbytes 0.50.2, hqq 0.2.8,
optimum-quanto 0.2.7, torchao 0.18.0); GPTQ/AWQ follow GPTQModel's packed checkpoint format;
`rtn` and `triton` the project's own format (kernels/format.py `packed_bytes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from quantbench.backends.base import Backend, MethodParams
from quantbench.backends.layers import EXPERTS
from quantbench.backends.layout import DTYPE_BYTES, Layout
from quantbench.backends.registry import backend_names, get_backend
from quantbench.errors import QuantbenchError
from quantbench.spec import validate_params

PLAN_DTYPE = "bfloat16"  # compute dtype of a plan that names none
DTYPES = tuple(DTYPE_BYTES)


def plan_methods() -> list[str]:
    """The methods whose backend describes a storage layout (built-in and $QUANTBENCH_BACKENDS;
    one that cannot be imported here cannot be priced either, and `quantbench methods` says why)."""
    return [name for name in backend_names() if _has_layout(name)]


def _has_layout(name: str) -> bool:
    try:
        return type(get_backend(name)).layout is not Backend.layout
    except QuantbenchError:
        return False


def weight_format(method: str, params: Mapping[str, Any] | None = None, device: str = "cuda") -> Layout:
    """The layout `method` stores on `device` with `params` (strings from the CLI or typed values),
    validated by the method's own Params; unset settings take the deployment defaults above."""
    backend = get_backend(method)
    given = validate_params(backend.Params, dict(params or {}), f"method {method}")
    fields = backend.Params.model_fields
    plan = {"compute_dtype": PLAN_DTYPE, **backend.plan_defaults}
    unset = {k: v for k, v in plan.items() if k in fields and k not in given.model_fields_set}
    return backend_layout(backend, given.model_copy(update=unset), device)


def backend_layout(backend: Backend, params: MethodParams, device: str) -> Layout:
    """`backend.layout(params, device)`, saying whether the method quantizes routed experts too."""
    return dataclasses.replace(backend.layout(params, device), quantizes_experts=EXPERTS in backend.layer_kinds)
