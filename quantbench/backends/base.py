"""The adapter contract every quantization method implements.

An adapter is one small class: facts as class attributes, a pydantic model for its
parameters, `check(device)` that says whether it can run here (never raises), and
`quantize(...)` that returns a `QuantizedModel` every eval can use. The runner measures the
cost of `quantize` (wall time, peak memory) the same way for every adapter, so adapters
do not time themselves. Optional hook: `codes(...)`, the integer codes, scales and zeros of
each quantized layer in the project's packed format, so the project's kernels can run the
method's weights without calling its internals.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
from packaging.version import InvalidVersion, Version
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from quantbench.backends.layers import CONV1D, EXPERTS, LINEAR, WeightMatrices, all_matrices
from quantbench.engines.protocol import QuantizedModel

# Re-exported: every backend builds a TorchModel and measures its module with these.
from quantbench.engines.torch_model import TorchModel as TorchModel
from quantbench.engines.torch_model import weight_bytes as weight_bytes
from quantbench.engines.torch_model import weight_count as weight_count
from quantbench.errors import QuantbenchError

if TYPE_CHECKING:
    from quantbench.backends.layout import Layout
    from quantbench.corpora import Corpus
    from quantbench.kernels.format import PackedWeight
    from quantbench.models import ResolvedModel


class MethodParams(BaseModel):
    """Base for adapter parameters: unknown keys are errors, values are immutable. Dumps use each
    field's stored spelling (`stored_as`), so trial keys and labels do not change with a rename."""

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)


def stored_as(name: str, stored: str, default: Any, **kwargs: Any) -> Any:
    """A field declared under its shared `name` that stores already written spell `stored`: both
    spellings are accepted, and dumps (trial keys, labels, params_json) keep writing `stored`."""
    return Field(default, validation_alias=AliasChoices(name, stored), serialization_alias=stored, **kwargs)


# How a refusal names each holder of weight matrices that `layer_kinds` lists.
LAYER_KIND_NAMES = {LINEAR: "nn.Linear layers", CONV1D: "Conv1D layers", EXPERTS: "fused experts"}


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class LayerCodes:
    """One quantized linear layer in the packed format (kernels/format.py), as `Backend.codes` gives it."""

    weight: PackedWeight
    bias: torch.Tensor | None = None
    # The input order the packed rows follow (GPTQ act-order sorts rows by group): the layer
    # computes x[:, in_perm] @ W. None: the layer's own input order.
    in_perm: torch.Tensor | None = None


class Backend:
    """One quantization method. Subclasses set the class attributes and implement `quantize`."""

    name: ClassVar[str]
    library: ClassVar[str | None] = None  # distribution name, for its version and install hint
    min_version: ClassVar[str | None] = None  # oldest release of `library` the adapter works with
    # The pyproject extra whose method environment runs this method's trials when `library` cannot
    # be installed beside the main environment's (runner/envs.py); None: any interpreter with `library`.
    environment: ClassVar[str | None] = None
    Params: ClassVar[type[MethodParams]] = MethodParams
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    # Quantizing reads text: the corpus its `calibration` parameter names, which the runner reads
    # (and rejects if missing or empty) before any trial starts.
    requires_calibration: ClassVar[bool] = False
    # Parameters every label shows even at their defaults, so `rtn` reads `rtn:bits=4,group_size=64`.
    headline: ClassVar[tuple[str, ...]] = ()
    # The quantized model can be written to disk in its quantized form and reloads as the same
    # model (save_pretrained -> from_pretrained: same logits, same weight bytes). The checkpoint
    # eval measures only these.
    is_serializable: ClassVar[bool] = False
    # Settings the planner prices when a plan does not give them, where people deploy the method
    # differently from the defaults `Params` picks for the embedded model.
    plan_defaults: ClassVar[dict[str, Any]] = {}
    # What a user should know before picking the method that no other fact says (its library
    # deprecated the API it calls), shown beside the facts by the CLI and the dashboard.
    note: ClassVar[str] = ""
    # The holders of weight matrices (`backends.layers`: linear, conv1d, experts) the method
    # quantizes; a model whose block matrices are all of other kinds is refused before any weight is
    # read. Empty: the method stores no weight in low precision (the baseline).
    layer_kinds: ClassVar[frozenset[str]] = frozenset({LINEAR})

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
        if self.library is None:
            return Availability(True)
        version = self.library_version()
        if version is None:
            return Availability(False, f"{self.library} is not installed (pip install {self.library})")
        too_old = older_than(self.library, version, self.min_version) if self.min_version else ""
        return Availability(not too_old, too_old)

    def refusal(self, model: ResolvedModel, params: MethodParams, device: str) -> str:
        """Why this method cannot quantize `model`'s architecture, in one line naming the architecture
        and the layer type, or "" when it can; decided from the architecture alone (no weight read).
        By default: every block matrix of the model is held by a layer kind outside `layer_kinds`."""
        if not self.layer_kinds:
            return ""
        skeleton = meta_model(model)
        matrices = all_matrices(skeleton).values()
        if not matrices or any(m.kind in self.layer_kinds for m in matrices):
            return ""
        types = ", ".join(sorted({m.layer_type for m in matrices}))
        kinds = ", ".join(sorted(LAYER_KIND_NAMES[kind] for kind in self.layer_kinds))
        return (
            f"{self.name} cannot quantize {type(skeleton).__name__}: its weight matrices are in {types} layers, "
            f"and {self.name} quantizes only {kinds}"
        )

    def saves(self, params: MethodParams) -> bool:
        """Whether a model quantized with `params` is written and reloads as itself (`is_serializable`,
        unless some setting of the method cannot be saved)."""
        return self.is_serializable

    def calibration_corpus(self, params: MethodParams) -> str | None:
        """The corpus reference this trial calibrates on (what the runner reads up front), or None."""
        return params.calibration if self.requires_calibration else None

    def quantize(
        self, model: ResolvedModel, params: MethodParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        raise NotImplementedError

    def codes(
        self,
        model: ResolvedModel,
        layers: dict[str, torch.nn.Linear],
        *,
        bits: int,
        group_size: int,
        symmetric: bool,
        device: str,
        calibration: Corpus | None = None,
    ) -> dict[str, LayerCodes]:
        """The codes, scales and zeros this method chooses for each of `layers` (module name ->
        the float nn.Linear of `model`, loaded in the dtype the caller computes in), at `bits` and
        `group_size` (-1: one group per output row), symmetric or with zero points. Other
        parameters keep the method's defaults; `calibration` is the corpus its default names,
        when already read. QuantbenchError where the method cannot give codes in that format."""
        raise QuantbenchError(f"{self.name} cannot give its codes in the packed format")

    def unit_map_refusal(self, params: MethodParams) -> str:
        """Why a sensitivity map (evals/sensitivity.py) cannot quantize this method's units one at a time
        at `params`, or "" when it can: only methods whose quantized model computes with dequantized
        weights give weights to swap into a float model (`float_model`, `rounded`)."""
        if type(self).rounded is not Backend.rounded:
            return ""
        return (
            f"{self.name} cannot be mapped unit by unit: it quantizes inside its library and gives no "
            "dequantized weights to swap into a float model (methods that can: rtn, hqq, triton with source=rtn)"
        )

    def float_model(
        self, model: ResolvedModel, params: MethodParams, device: str
    ) -> tuple[torch.nn.Module, dict[str, WeightMatrices]]:
        """The unquantized module as this method's quantized model computes around its weights (dtype,
        device), and the matrices in it that the method quantizes, by name. See `unit_map_refusal`."""
        raise QuantbenchError(self.unit_map_refusal(params))

    def rounded(self, matrices: WeightMatrices, bits: int, params: MethodParams) -> torch.Tensor:
        """`matrices` (a `float_model`'s) as this method at `bits` (other parameters from `params`)
        computes with them: dequantized, (count, out, in), in their dtype. See `unit_map_refusal`."""
        raise QuantbenchError(self.unit_map_refusal(params))

    def layout(self, params: MethodParams, device: str) -> Layout:
        """How `params` store the weights on `device`: what the planner prices."""
        raise QuantbenchError(f"method {self.name!r} describes no storage layout, so the planner cannot price it")


def older_than(distribution: str, installed: str, minimum: str) -> str:
    """Why `installed` (a release of `distribution`) is older than `minimum`, compared as PEP 440
    versions with local tags such as +cu128 and pre-release tags ignored; "" when it is not."""
    try:
        too_old = Version(Version(installed).base_version) < Version(minimum)
    except InvalidVersion:
        return f"{distribution} reports version {installed!r}, not a PEP 440 version; {minimum} or newer is needed"
    if not too_old:
        return ""
    hint = f"pip install -U '{distribution}>={minimum}'"
    return f"{distribution} {installed} is older than the {minimum} this adapter needs ({hint})"


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
    that will be quantized (every nn.Linear except those named in `skip`); -1 (one group per
    output row) fits every layer."""
    if group_size == -1:
        return
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
