"""Sweep files: many trials written as one flat YAML document, validated before anything runs.

```yaml
models: [embedded:smollm2-135m]        # one or several model references
device: cpu
methods:                               # "name[:k=v,...]" or {name: ..., params: {...}}
  - baseline
  - rtn:bits=4,group_size=64
  - name: bnb
    params: {bits: 4, quant_type: nf4}
evals:                                 # eval name -> its parameters
  perplexity: {corpus: builtin, seq_len: 512, max_tokens: 4096}
repeats: 1                             # run every trial this many times (distinct keys)
timeout_s: 3600                        # per trial; the worker is killed past it
```

The sweep is the explicit product models × methods × repeats; every error names the file and
the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from quantbench.errors import QuantbenchError
from quantbench.runner.trial import plan_trial
from quantbench.spec import DEVICES, EvalSpec, MethodSpec, ModelRef, TrialSpec, validate_params


class MethodEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(min_length=1)
    methods: list[str | MethodEntry] = Field(min_length=1)
    evals: dict[str, dict[str, Any] | None] = Field(default_factory=lambda: {"perplexity": {}})
    device: str = "cpu"
    repeats: int = Field(1, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    trust_remote_code: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
        return device


def load_sweep(path: Path) -> tuple[SweepFile, list[TrialSpec]]:
    """Parse and validate a sweep file, and plan all its trials (nothing is run or loaded)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise QuantbenchError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise QuantbenchError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise QuantbenchError(f"{path}:{line} {problem}") from None
    if not isinstance(raw, dict):
        raise QuantbenchError(f"{path}: expected a mapping with models, methods and evals at the top level")
    if "model" in raw and "models" not in raw:  # one model is common enough to allow the singular
        raw["models"] = [raw.pop("model")]
    sweep = validate_params(SweepFile, raw, str(path))

    specs = []
    for entry in sweep.methods:
        try:
            method = MethodSpec.parse(entry) if isinstance(entry, str) else MethodSpec(entry.name, entry.params)
            evals = [EvalSpec(name, params or {}) for name, params in sweep.evals.items()]
            for model in sweep.models:
                ref = ModelRef(model, trust_remote_code=sweep.trust_remote_code)
                planned = plan_trial(ref, method, evals, sweep.device)
                specs += [TrialSpec(planned.model, planned.method, planned.evals, planned.device, r)
                          for r in range(sweep.repeats)]  # fmt: skip
        except QuantbenchError as exc:
            raise QuantbenchError(f"{path}: {exc}") from None
    return sweep, specs
