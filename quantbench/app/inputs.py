"""What a user types, as the specs take it, and durations as a user reads them: the helpers that
the CLI and the dashboard share, so both read the same text the same way.

An eval parameter typed as text (a `run` flag, a dashboard text box, `--eval NAME:KEY=VALUE`) is
read by its Params field: a sequence or a mapping is a comma list (`128,512`, `piqa=a.jsonl`),
anything else goes to pydantic as typed. A value left empty keeps the Params default.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic.fields import FieldInfo

from quantbench.errors import QuantbenchError
from quantbench.spec import EvalSpec

DEFAULT_EVALS = ("perplexity",)


def duration(seconds: float) -> str:
    """Seconds up to a minute and a half, minutes after that."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def int_list(text: str) -> list[int]:
    """A comma list of whole numbers ("128, 512"); range checks belong to the eval's Params."""
    try:
        return [int(part) for part in comma_list(text)]
    except ValueError:
        raise QuantbenchError(f"expected comma-separated integers, got {text!r}") from None


def optional_number(text: str | float | None, what: str) -> float | None:
    """A number typed as text ("0.05", " 1e-2 "); None when left empty."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        value = float(text)
    except ValueError:
        raise QuantbenchError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise QuantbenchError(f"{what} must be a finite number, got {text!r}")
    return value


def unwrap_optional(annotation: object) -> object:
    """`int | None` -> int; `Annotated[int, Gt(0)]` -> int."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            annotation = args[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def is_collection(info: FieldInfo) -> bool:
    return typing.get_origin(unwrap_optional(info.annotation)) in (tuple, list, dict)


def from_text(info: FieldInfo, text: Any) -> Any:
    """A value typed as text, as the field takes it: a collection field's comma list split (whole
    numbers checked here, so the message names the list); anything else unchanged."""
    if not isinstance(text, str) or not is_collection(info):
        return text
    annotation = unwrap_optional(info.annotation)
    items = [unwrap_optional(a) for a in typing.get_args(annotation) if a is not Ellipsis]
    if typing.get_origin(annotation) is not dict and items and items[0] is int:
        return int_list(text)
    return comma_list(text)  # a mapping's KEY=VALUE items are parsed by its Params validator


def as_text(value: Any) -> Any:
    """A collection default as a text box shows it (the inverse of `from_text`); else unchanged."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return value


def default_help(info: FieldInfo, shown: Callable[[Any], Any] = as_text) -> str:
    """A field's description and the default it keeps when left unset, written by `shown` (a None
    default is said by the description itself: "unset = the whole corpus")."""
    default = info.get_default(call_default_factory=True)
    if is_unset(default):
        return info.description or ""
    return f"{info.description} (default: {shown(default)})"


def is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | tuple | dict) and not value)


def parse_evals(texts: Iterable[str]) -> list[EvalSpec]:
    """`--eval` values, comma-separated or repeated, each eval with its own parameters if any:
    `perplexity,latency:new_tokens=8,repeats=2` is perplexity, and latency with two parameters (a
    part with '=' and no ':' continues the eval before it). A name given twice merges its parameters."""
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for text in texts:
        for part in comma_list(text):
            if current is not None and "=" in part and ":" not in part:
                current.append(part)
                continue
            name, _, first = part.partition(":")
            current = groups.setdefault(name.strip(), [])
            if first.strip():
                current.append(first)
    return [EvalSpec.parse(f"{name}:{','.join(parts)}") for name, parts in groups.items()]


def eval_specs(evals: Iterable[EvalSpec], values: Mapping[str, Mapping[str, Any]]) -> list[EvalSpec]:
    """Each eval with `values[its name]` under its own parameters (its own win); unset values are
    dropped so the Params defaults apply, and text is read by each field (`from_text`)."""
    from quantbench.evals.registry import get_eval

    specs = []
    for spec in evals:
        fields = get_eval(spec.name).Params.model_fields
        given = {**values.get(spec.name, {}), **spec.params}
        params = {k: from_text(fields[k], v) if k in fields else v for k, v in given.items() if not is_unset(v)}
        specs.append(EvalSpec(spec.name, params))
    return specs
