"""The shared value types: what to load, how to quantize it, what to measure.

Specs are plain frozen data. Building one never touches the machine: models, corpora and
devices are resolved by the runner, not here. Parameters are kept as validated, defaults-filled
dicts (each backend and eval owns a pydantic model for its own), so two specs that mean the
same thing have the same trial key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from quantbench.errors import QuantbenchError

DEFAULT_MODEL = "embedded:smollm2-135m"
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it: a hub id, a local directory, a .gguf file, or `embedded:…`."""

    ref: str = DEFAULT_MODEL
    trust_remote_code: bool = False


def _parse_assignments(text: str, what: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QuantbenchError(f"{what}: expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return params


@dataclass(frozen=True)
class MethodSpec:
    """A quantization method and its parameters, e.g. `bnb:bits=4,quant_type=nf4`."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        """Parse the CLI form `name[:key=value,...]`; values stay strings until validated."""
        name, _, rest = text.strip().partition(":")
        if not name:
            raise QuantbenchError(f"method {text!r}: expected name[:key=value,...]")
        return cls(name, _parse_assignments(rest, f"method {name!r}"))

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))


@dataclass(frozen=True)
class EvalSpec:
    """An evaluation and its protocol parameters, e.g. `perplexity` with corpus and seq_len."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> EvalSpec:
        name, _, rest = text.strip().partition(":")
        if not name:
            raise QuantbenchError(f"eval {text!r}: expected name[:key=value,...]")
        return cls(name, _parse_assignments(rest, f"eval {name!r}"))


@dataclass(frozen=True)
class TrialSpec:
    """One model × one method × its evals on one device: the unit that is run and stored."""

    model: ModelRef
    method: MethodSpec
    evals: tuple[EvalSpec, ...]
    device: str = "cpu"
    repeat: int = 0  # the n-th repetition of the same trial in a sweep (0 = the first)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialSpec:
        return cls(
            ModelRef(**data["model"]),
            MethodSpec(data["method"]["name"], data["method"]["params"]),
            tuple(EvalSpec(e["name"], e["params"]) for e in data["evals"]),
            data["device"],
            data.get("repeat", 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"ref": self.model.ref, "trust_remote_code": self.model.trust_remote_code},
            "method": {"name": self.method.name, "params": dict(self.method.params)},
            "evals": [{"name": e.name, "params": dict(e.params)} for e in self.evals],
            "device": self.device,
            # Only repetitions add a field, so the keys of first runs never change.
            **({"repeat": self.repeat} if self.repeat else {}),
        }

    @property
    def key(self) -> str:
        """Stable hash of everything that changes the result (given validated params)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def validate_params(model: type[BaseModel], raw: Mapping[str, Any], what: str) -> BaseModel:
    """Validate raw (often string) parameters against a component's pydantic model.

    Errors become one line naming the component, the field and what was wrong.
    """
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(_printable(p) for p in err["loc"]) or "params"
            msg = " ".join(err["msg"].split())  # one line, whatever a custom validator echoed
            if err["type"] == "extra_forbidden":
                msg = f"unknown parameter (valid: {', '.join(model.model_fields)})"
            problems.append(f"{where}: {msg}")
        raise QuantbenchError(f"{what}: " + "; ".join(problems)) from None


def _printable(part: object) -> str:
    """A field name as typed, or quoted when it holds a newline or other control character (keys
    come from sweep files and the UI), so the message stays one line."""
    text = str(part)
    return text if text.isprintable() else repr(text)
