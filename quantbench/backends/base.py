"""The adapter contract every quantization method implements.

An adapter is one small class: facts as class attributes, a pydantic model for its
parameters, `check(device)` that says whether it can run here (never raises), and
`quantize(...)` that returns a `QuantizedModel` every eval can use. The runner measures the
cost of `quantize` (wall time, peak memory) the same way for every adapter, so adapters
do not time themselves.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict

from quantbench.engines.protocol import QuantizedModel

# Re-exported: every backend builds a TorchModel and measures its module with these.
from quantbench.engines.torch_model import TorchModel as TorchModel
from quantbench.engines.torch_model import weight_bytes as weight_bytes
from quantbench.engines.torch_model import weight_count as weight_count
from quantbench.errors import QuantbenchError

if TYPE_CHECKING:
    from quantbench.corpora import Corpus
    from quantbench.models import ResolvedModel


class MethodParams(BaseModel):
    """Base for adapter parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


class Backend:
    """One quantization method. Subclasses set the class attributes and implement `quantize`."""

    name: ClassVar[str]
    library: ClassVar[str | None] = None  # distribution name, for its version and install hint
    Params: ClassVar[type[MethodParams]] = MethodParams
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    requires_calibration: ClassVar[bool] = False
    # Parameters every label shows even at their defaults, so `rtn` reads `rtn:bits=4,group_size=64`.
    headline: ClassVar[tuple[str, ...]] = ()
    is_serializable: ClassVar[bool] = False

    def library_version(self) -> str | None:
        if self.library is None:
            return None
        try:
            return importlib.metadata.version(self.library)
        except importlib.metadata.PackageNotFoundError:
            return None

    def check(self, device: str) -> Availability:
        """Whether this method can run on `device` here, and if not, why. Never raises."""
        if device not in self.devices:
            return Availability(False, f"{self.name} does not run on {device} (supports {', '.join(self.devices)})")
        if device == "cuda" and not torch.cuda.is_available():
            return Availability(False, "no CUDA device visible to torch")
        if self.library and self.library_version() is None:
            return Availability(False, f"{self.library} is not installed (pip install {self.library})")
        return Availability(True)

    def quantize(
        self, model: ResolvedModel, params: MethodParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        raise NotImplementedError


def meta_model(model: ResolvedModel) -> torch.nn.Module:
    """The architecture of `model` on the meta device (no memory, nothing read but the config): for
    counting the unquantized weights and checking layer shapes before any weight is loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = model.ref.trust_remote_code
    config = AutoConfig.from_pretrained(model.path, trust_remote_code=trust)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust)


def check_group_size(module: torch.nn.Module, group_size: int, skip: tuple[str, ...] = ("lm_head",)) -> None:
    """Raise QuantbenchError if `group_size` does not divide the input width of a linear layer
    that will be quantized (every nn.Linear except those named in `skip`)."""
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and name not in skip and layer.in_features % group_size:
            raise QuantbenchError(
                f"group_size {group_size} does not divide in_features {layer.in_features} of layer {name}"
            )


def int_choice(*values: int) -> object:
    """An int field restricted to `values` that also accepts the CLI's strings ("4")."""
    return Annotated[Literal[values], BeforeValidator(lambda v: int(v) if isinstance(v, str) and v.isdigit() else v)]


def calibration_windows(calibration: Corpus | str, tokenizer, n_samples: int, seq_len: int) -> torch.Tensor:
    """`n_samples` windows of `seq_len` tokens spread evenly over the calibration text, as a
    (n_samples, seq_len) tensor of token ids. `calibration` is the corpus the method's
    `calibration` parameter names: already loaded (the runner reads it while checking a trial's
    inputs, before any trial starts) or its reference, read here (direct library use)."""
    from quantbench.corpora import load_corpus

    corpus = load_corpus(calibration) if isinstance(calibration, str) else calibration
    # Tokenizing a whole corpus takes seconds; at ~4 characters per token, 12 per token needed
    # leaves ample room while keeping the windows spread over a deterministic prefix.
    ids = tokenizer(corpus.text[: 12 * n_samples * seq_len], return_tensors="pt").input_ids[0]
    if len(ids) < n_samples * seq_len:
        raise QuantbenchError(
            f"calibration corpus {corpus.name!r} has {len(ids)} tokens, fewer than "
            f"n_samples × seq_len = {n_samples * seq_len}"
        )
    starts = torch.linspace(0, len(ids) - seq_len, n_samples).long().tolist()
    return torch.stack([ids[start : start + seq_len] for start in starts])
