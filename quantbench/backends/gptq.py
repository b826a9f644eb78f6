"""GPTQ through GPTQModel (AutoGPTQ is archived and transformers v5 dropped it). The shared
GPTQModel flow (calibrate on text windows, quantize, save, reload with the inference kernel
GPTQModel picks for this machine; or read the saved layers' codes) lives here; awq.py reuses it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PositiveInt, field_validator

from quantbench import models
from quantbench.backends.base import (
    Backend,
    LayerCodes,
    MethodParams,
    QuantizedModel,
    TorchModel,
    calibration_windows,
    check_group_size,
    int_choice,
    meta_model,
    stored_as,
    weight_count,
)
from quantbench.backends.layers import CONV1D, EXPERTS, LINEAR, measured_coverage
from quantbench.backends.layout import Layout, grouping, groups_per_row
from quantbench.corpora import CORPUS_FORMS, Corpus
from quantbench.errors import QuantbenchError
from quantbench.kernels.format import int32_words
from quantbench.kernels.gptq import convert_gptq
from quantbench.models import ResolvedModel


class GptqModelParams(MethodParams):
    """What GPTQ and AWQ share: groups, calibration size, and the dtype the kernels compute in."""

    # 64, not the customary 128 (which plans price: `plan_defaults`): it divides the widths of the
    # default model (SmolLM2-135M: 576) as well as every multiple of 128.
    group_size: int = Field(64, description="weights sharing one scale and zero; -1 = one group per output row")
    # 32 windows of 256 tokens (the GPTQ paper used 128 × 2048): on a busy 2-core CPU GPTQModel
    # spent ~1.5 min per SmolLM2 layer on 128 windows, most of an hour for the default model.
    n_samples: PositiveInt = Field(32, description="calibration windows")
    seq_len: PositiveInt = Field(256, description="tokens per calibration window")
    # The runner reads the corpus before any trial starts.
    calibration: str = Field(
        "builtin",
        description=f"text the calibration windows come from: {CORPUS_FORMS}",
    )
    compute_dtype: Literal["bfloat16", "float16"] = Field(
        "bfloat16", description="dtype the kernels compute in (GPTQModel's CPU kernels need half precision)"
    )

    @field_validator("group_size")
    @classmethod
    def _positive_or_per_row(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("must be positive, or -1 for one group per output row")
        return value


class GptqParams(GptqModelParams):
    bits: int_choice(2, 3, 4, 8) = Field(4, description="bits per weight code")
    desc_act: bool = Field(False, description="quantize columns in order of decreasing activation size")
    symmetric: bool = stored_as("symmetric", "sym", True, description="symmetric range around zero, no zero point")
    damp: float = Field(0.05, description="fraction of the Hessian's mean diagonal added for stability")

    @field_validator("damp")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be between 0 and 1")
        return value


class GptqModelBackend(Backend):
    """GPTQModel-based methods: subclasses give the method's GPTQModel config."""

    library = "gptqmodel"
    # Tested with 7.6, the newest release that fits beside gradio 6 (7.7 needs pillow >= 13).
    min_version = "7.6"
    requires_calibration = True
    is_serializable = True
    headline = ("bits", "group_size")
    checkpoint_formats: ClassVar[tuple[str, ...]]  # the `checkpoint_format`s `layer_codes` reads
    plan_defaults: ClassVar[dict[str, Any]] = {"group_size": 128}
    # GPTQModel's model definitions name Conv1D projections and each expert of fused experts too.
    layer_kinds = frozenset({LINEAR, CONV1D, EXPERTS})

    def gptqmodel_config(self, params: GptqModelParams) -> object:
        raise NotImplementedError

    def pack_backend(self, device: str) -> str:
        """The GPTQModel `BACKEND` value `quantize` packs the layers with on `device`: "auto" lets
        GPTQModel pick (the saved format is the same whichever packs it)."""
        return "auto"

    def codes_params(self, bits: int, group_size: int, symmetric: bool) -> GptqModelParams:
        """The method's parameters (defaults elsewhere) for codes in that format."""
        raise NotImplementedError

    def layer_codes(self, tensors: dict[str, torch.Tensor], params: GptqModelParams, layout: str) -> LayerCodes:
        """One layer of a saved checkpoint (its qweight, qzeros, scales, g_idx, bias) in the packed format."""
        raise NotImplementedError

    def check_shapes(self, skeleton: torch.nn.Module, params: GptqModelParams) -> None:
        """Raise QuantbenchError, before any weight is read, for layers the method cannot quantize."""
        check_group_size(skeleton, params.group_size)

    def quantize(
        self, model: ResolvedModel, params: GptqModelParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        """`calibration`: the corpus `params.calibration` names, when the runner has read it already."""
        skeleton = meta_model(model)
        dtype = models.DTYPES[params.compute_dtype]
        # Reloading the saved checkpoint selects the inference kernel for this device (quantize
        # leaves the packing kernel in place), so measurements see what a user would deploy.
        with tempfile.TemporaryDirectory(prefix="quantbench-gptqmodel-") as tmp:
            self._save_checkpoint(model, params, device, tmp, calibration)
            _quiet_gptqmodel()
            from gptqmodel import GPTQModel

            trust = model.ref.trust_remote_code
            module = GPTQModel.load(tmp, device=device, dtype=dtype, trust_remote_code=trust).model.eval()
        layer = next(m for m in module.modules() if type(m).__module__.startswith("gptqmodel.nn_modules.qlinear"))
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            f"GPTQModel {type(layer).__name__}",
            weights=weight_count(skeleton),
            coverage=measured_coverage(skeleton, module),
        )

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
        """`model` calibrated, quantized and saved by GPTQModel as `quantize` does (default calibration),
        and each of `layers` read back from the checkpoint and converted (`kernels.gptq`, `kernels.awq`).
        GPTQModel reads the weights from disk itself; `layers` only names them."""
        from safetensors.torch import load_file

        params = self.codes_params(bits, group_size, symmetric)
        with tempfile.TemporaryDirectory(prefix="quantbench-gptqmodel-") as tmp:
            self._save_checkpoint(model, params, device, tmp, calibration)
            config = json.loads((Path(tmp) / "quantize_config.json").read_text())
            tensors = {k: t for shard in sorted(Path(tmp).glob("*.safetensors")) for k, t in load_file(shard).items()}
        layout = config.get("checkpoint_format") or config.get("format")
        if layout not in self.checkpoint_formats:
            raise QuantbenchError(
                f"GPTQModel saved a {layout!r} checkpoint; the {self.name} converter reads {self.checkpoint_formats}"
            )
        codes = {}
        for name in layers:
            found = {key: tensors.get(f"{name}.{key}") for key in ("qweight", "qzeros", "scales", "g_idx", "bias")}
            if found["qweight"] is None:
                raise QuantbenchError(f"{self.name} left layer {name} unquantized; keep it in float (skip)")
            codes[name] = self.layer_codes(found, params, layout)
        return codes

    def _save_checkpoint(
        self,
        model: ResolvedModel,
        params: GptqModelParams,
        device: str,
        directory: str,
        calibration: Corpus | None = None,
    ) -> None:
        """Calibrate, quantize and save `model` as a GPTQModel checkpoint (safetensors and
        quantize_config.json) in `directory`: what `quantize` reloads and `codes` converts."""
        self.check_shapes(meta_model(model), params)
        tokenizer = models.load_tokenizer(model)
        corpus = calibration if calibration is not None else params.calibration
        windows = calibration_windows(corpus, tokenizer, params.n_samples, params.seq_len)
        texts = tokenizer.batch_decode(windows)  # GPTQModel takes text, never a dataset name
        # GPTQModel's loader asks for 2 CPU workers but by default grants (cores + 1) // 2, which
        # fails on machines with 2 cores or fewer; it reads this variable when first imported.
        if ((os.cpu_count() or 1) + 1) // 2 < 2:
            os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
        _quiet_gptqmodel()
        from gptqmodel import BACKEND, GPTQModel

        dtype = models.DTYPES[params.compute_dtype]
        trust = model.ref.trust_remote_code
        work = GPTQModel.load(str(model.path), self.gptqmodel_config(params), dtype=dtype, trust_remote_code=trust)
        work.quantize(texts, batch_size=1, backend=BACKEND(self.pack_backend(device)))
        with _quiet_stdout():
            work.save(directory)


def _quiet_gptqmodel() -> None:
    """Give GPTQModel's terminal output the level set for the `gptqmodel` logger (quiet_library_logs
    sets WARNING): its banner, INFO lines, per-layer tables and progress bars go to stdout, which in
    a trial worker is the user's terminal. Call it before GPTQModel is first imported."""
    level = logging.getLogger("gptqmodel").level
    if level == logging.NOTSET:
        return
    # GPTQModel logs through logbar's shared logger, outside the `gptqmodel` hierarchy, and prints
    # its banner while being imported. That logger is created at INFO on first use, so its level
    # (logbar's documented setLevel) can only be set once it exists: here, rather than in
    # quiet_library_logs, since creating it prints a blank line and starts two threads.
    from logbar import LogBar

    LogBar.shared().setLevel(level)
    if level <= logging.INFO:
        return
    # A warning at import that says nothing about the run: multi-core packing needs a free-threaded
    # Python (GPTQModel's own switch).
    os.environ.setdefault("GPTQMODEL_DISABLE_GIL_WARNING", "1")
    # Progress bars ignore the level, and logbar turns them off only in what it takes for CI (CI=1,
    # TERM=dumb...), which would mean faking that for the whole process. GPTQModel has a switch of
    # its own, for pytest runs without a terminal: while this returns True its logger hands out
    # no-op bars (and reports progress as INFO lines, silenced above). It is private, so a
    # GPTQModel without it keeps its bars rather than failing.
    import gptqmodel.utils.logger as gptqmodel_logger

    if hasattr(gptqmodel_logger, "_suppress_live_renderables"):
        gptqmodel_logger._suppress_live_renderables = lambda: True


def _quiet_stdout() -> contextlib.AbstractContextManager:
    """`save()` prints the saved directory's file list and whole config files with print(), which
    no logger level reaches: swallowed while GPTQModel's logs are quiet (_quiet_gptqmodel)."""
    if logging.getLogger("gptqmodel").level <= logging.INFO:  # NOTSET too: nobody asked for quiet
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(io.StringIO())


class GptqBackend(GptqModelBackend):
    name = "gptq"
    Params = GptqParams
    # "gptq" (v1) stores zero − 1, "gptq_v2" the zero itself (kernels/gptq.py)
    checkpoint_formats = ("gptq", "gptq_v2")

    def codes_params(self, bits: int, group_size: int, symmetric: bool) -> GptqParams:
        return GptqParams(bits=bits, group_size=group_size, symmetric=symmetric)

    def layer_codes(self, tensors: dict[str, torch.Tensor], params: GptqParams, layout: str) -> LayerCodes:
        packed, perm = convert_gptq(
            tensors["qweight"], tensors["qzeros"], tensors["scales"], params.bits, tensors["g_idx"], layout == "gptq"
        )
        return LayerCodes(packed, tensors["bias"], perm)

    def layout(self, params: GptqParams, device: str) -> Layout:
        return Layout(
            self.name,
            f"gptq {params.bits}-bit {grouping(params.group_size)}",
            params.bits,
            params.compute_dtype,
            lambda rows, cols: _linear_bytes(rows, cols, params.bits, params.group_size),
        )

    def gptqmodel_config(self, params: GptqParams) -> object:
        from gptqmodel import GPTQConfig

        return GPTQConfig(
            bits=params.bits,
            group_size=params.group_size,
            desc_act=params.desc_act,
            act_group_aware=not params.desc_act,  # GPTQModel's default; it excludes desc_act
            sym=params.symmetric,
            damp_percent=params.damp,
        )


def _linear_bytes(rows: int, cols: int, bits: int, group_size: int) -> int:
    """GPTQModel's checkpoint: qweight (cols·bits/32, rows) int32, qzeros (groups, rows·bits/32) int32,
    scales (groups, rows) fp16, g_idx (cols,) int32 (kept even without act-order)."""
    groups = groups_per_row(group_size, cols)
    return (rows * int32_words(cols, bits) + groups * int32_words(rows, bits)) * 4 + groups * rows * 2 + cols * 4
