"""Per-unit bit widths: the `layer_bits` parameter that rtn, hqq and triton share.

Spelt `UNIT:BITS` entries joined with '+' (',' separates a method's parameters), e.g.
`rtn:bits=3,layer_bits=model.layers.0:8+model.layers.5.mlp:4`. A unit is an exact module name
(a decoder block, an attention or MLP module, one projection, or `model` for the whole
stack); a weight matrix takes the bits of the longest unit that contains it, and `bits` where
none does. `float` instead of a number keeps the unit's matrices unquantized, so
`layer_bits=model:float+model.layers.3:4` quantizes block 3 alone. The default, empty, leaves
trial keys and labels as they were before the parameter existed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, field_validator

from quantbench.backends.layers import WeightMatrices
from quantbench.errors import QuantbenchError

FLOAT = "float"


def parse_layer_bits(text: str) -> dict[str, int | None]:
    """`UNIT:BITS+UNIT:BITS` as {unit: bits}, None for `float`. QuantbenchError on a malformed entry."""
    overrides: dict[str, int | None] = {}
    for entry in filter(None, (part.strip() for part in text.split("+"))):
        unit, sep, bits = entry.rpartition(":")
        unit, bits = unit.strip(), bits.strip()
        if not sep or not unit or not (bits == FLOAT or bits.isdigit()):
            raise QuantbenchError(f"layer_bits entry {entry!r} is not UNIT:BITS (e.g. model.layers.0:8 or :float)")
        if unit in overrides:
            raise QuantbenchError(f"layer_bits names {unit} twice")
        overrides[unit] = None if bits == FLOAT else int(bits)
    return overrides


def format_layer_bits(overrides: Mapping[str, int | None]) -> str:
    """The canonical spelling of `overrides`: units in name order, so equal recipes get equal trial keys."""
    return "+".join(f"{unit}:{FLOAT if bits is None else bits}" for unit, bits in sorted(overrides.items()))


def canonical_layer_bits(text: str, allowed: Iterable[int]) -> str:
    """Validate `text` against the bit widths a method stores (`allowed`) and spell it canonically."""
    overrides = parse_layer_bits(text)
    allowed = tuple(allowed)
    for unit, bits in overrides.items():
        if bits is not None and bits not in allowed:
            raise QuantbenchError(
                f"layer_bits gives {unit} {bits} bits; this method stores {', '.join(map(str, allowed))} or float"
            )
    return format_layer_bits(overrides)


def contains(unit: str, name: str) -> bool:
    """Whether module or tensor `name` lies inside module `unit` (dot boundaries, never substrings)."""
    return name == unit or name.startswith(unit + ".")


def unit_bits(matrices: Mapping[str, WeightMatrices], text: str, default: int) -> dict[str, int | None]:
    """The bits of each of `matrices` (by name) under the overrides `text`, None where kept in float.
    QuantbenchError naming every unit that contains none of them."""
    overrides = parse_layer_bits(text)
    unknown = [unit for unit in overrides if not any(contains(unit, name) for name in matrices)]
    if unknown:
        raise QuantbenchError(f"layer_bits names no quantized module of this model: {', '.join(unknown)}")
    return {name: bits_of(overrides, name, default) for name in matrices}


def bits_of(overrides: Mapping[str, int | None], name: str, default: int) -> int | None:
    """The bits of the matrix `name`: those of the longest unit of `overrides` containing it, else `default`."""
    units = [unit for unit in overrides if contains(unit, name)]
    return overrides[max(units, key=len)] if units else default


LAYER_BITS_HELP = (
    "per-unit bits, UNIT:BITS joined with '+' (UNIT an exact module name, e.g. model.layers.0 or "
    "model.layers.0.mlp.down_proj; the longest containing unit wins; BITS may be 'float')"
)


def layer_bits_field() -> Any:
    return Field("", description=LAYER_BITS_HELP)


def layer_bits_validator(allowed: Iterable[int]) -> Any:
    """A pydantic validator of a `layer_bits` field for a method that stores `allowed` bit widths."""
    allowed = tuple(allowed)

    def check(value: str) -> str:
        try:
            return canonical_layer_bits(value, allowed)
        except QuantbenchError as exc:
            raise ValueError(str(exc)) from None

    return field_validator("layer_bits")(check)
